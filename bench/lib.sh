# shellcheck shell=bash
# Shared by the benchmark scripts: a berth daemon of the session's user with its
# own temporary admin directory, state directory and API socket, started and
# stopped by its PID. Expects log() and die() from the sourcing script.
#
#   bench_daemon_init BERTH_BINARY   sets bench_work (the temporary directory,
#                                    with etc/catalog.d for catalog files)
#   b ARGS...                        runs the CLI against that daemon
#   bench_daemon_start [VAR=value…]  starts it (extra environment for it only)
#   bench_daemon_stop                stops it (SIGTERM, SIGKILL after 5 s)
#   bench_daemon_pid                 its PID once started

bench_bin=""
bench_work=""
bench_daemon_pid=""

bench_daemon_init() {
    bench_bin=$1
    [[ -x "$bench_bin" ]] || die "no berth binary at $bench_bin"
    [[ -n "${XDG_RUNTIME_DIR:-}" ]] || die "XDG_RUNTIME_DIR is not set: this needs a user session"
    bench_work=$(mktemp -d -t berth-bench.XXXXXX)
    mkdir -p "$bench_work/etc/catalog.d" "$bench_work/state"
}

b() {
    env BERTH_ETC_DIR="$bench_work/etc" XDG_STATE_HOME="$bench_work/state" \
        BERTH_SOCKET="$bench_work/api.sock" timeout 120 "$bench_bin" "$@"
}

# berth allows one daemon per user: wait (bounded) for another one to go away, such as
# that of an integration test running at the same time.
bench_daemon_start() {
    local deadline=$((SECONDS + 90)) launcher waited=0 info_pid
    log "starting berth daemon ($bench_bin)"
    while :; do
        rm -f "$bench_work/daemon.pid"
        # The shell writes its own PID and then becomes the daemon: that PID is the daemon's.
        # shellcheck disable=SC2016 # expanded by that inner shell
        env BERTH_ETC_DIR="$bench_work/etc" XDG_STATE_HOME="$bench_work/state" \
            BERTH_SOCKET="$bench_work/api.sock" "$@" \
            sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$bench_work/daemon.pid" \
            "$bench_bin" daemon >"$bench_work/daemon.log" 2>&1 </dev/null &
        launcher=$!
        until [[ -s "$bench_work/daemon.pid" ]]; do
            if ! kill -0 "$launcher" 2>/dev/null; then
                [[ -s "$bench_work/daemon.pid" ]] ||
                    die "the daemon did not start: $(tail -n 5 "$bench_work/daemon.log")"
                break
            fi
            sleep 0.05
        done
        bench_daemon_pid=$(<"$bench_work/daemon.pid")
        until b info >/dev/null 2>&1; do
            kill -0 "$bench_daemon_pid" 2>/dev/null || break
            ((SECONDS < deadline)) || die "the daemon did not answer within 90 s"
            sleep 0.1
        done
        kill -0 "$bench_daemon_pid" 2>/dev/null && break
        wait "$launcher" || true
        bench_daemon_pid=""
        if grep -q "another berth daemon" "$bench_work/daemon.log" && ((SECONDS < deadline)); then
            ((waited)) || log "another berth daemon of $(id -un) is running; waiting up to 90 s" \
                "for it to stop (stop yours with: systemctl --user stop berth)"
            waited=1
            sleep 5
            continue
        fi
        die "the daemon exited: $(tail -n 5 "$bench_work/daemon.log")"
    done
    info_pid=$(b info --json | sed -n 's/^ *"pid": *\([0-9]*\).*/\1/p')
    [[ "$info_pid" == "$bench_daemon_pid" ]] ||
        die "the daemon says pid ${info_pid:-?}, expected $bench_daemon_pid"
}

bench_daemon_running() {
    [[ -n "$bench_daemon_pid" ]] && kill -0 "$bench_daemon_pid" 2>/dev/null
}

bench_daemon_stop() {
    local i
    bench_daemon_running || return 0
    kill -TERM "$bench_daemon_pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$bench_daemon_pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "bench: the daemon ignored SIGTERM for 5 s; killing it" >&2
    kill -KILL "$bench_daemon_pid" 2>/dev/null || true
}

# Removes the work directory; prints the daemon log's tail first when RC is not 0.
bench_daemon_finish() {
    local rc=$1
    if ((rc != 0)) && [[ -f "$bench_work/daemon.log" ]]; then
        echo "--- last lines of the daemon log:" >&2
        tail -n 30 "$bench_work/daemon.log" >&2 || true
    fi
    [[ -z "$bench_work" ]] || rm -rf "$bench_work"
}
