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

# ---------------------------------------------------------------------------
# The outer side, run by root or the desktop user from the checkout.
# ---------------------------------------------------------------------------

# bench_prepare REPO: the test user's session, rootless Podman and the test
# images, exactly as scripts/test sets them up. Sets bench_user.
bench_prepare() {
    local repo=$1 exports
    if ! declare -F berth_env_as_user >/dev/null; then
        # shellcheck source=scripts/lib/env.sh
        . "$repo/scripts/lib/env.sh"
    fi
    # rustup installs into ~/.cargo/bin; a non-login shell may not have it on PATH.
    if ! command -v cargo >/dev/null && [[ -x "${HOME:-}/.cargo/bin/cargo" ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    berth_env_require_commands cargo
    log "environment (user session, rootless Podman, test images)"
    exports=$("$repo/scripts/test-env")
    eval "$exports"
    bench_user=${BERTH_TEST_USER:-$(id -un)}
}

# bench_run_as_user REPO SCRIPT VAR...: builds the release binary, copies it
# with SCRIPT and this library into a directory the user can read (the
# checkout may sit below directories the test user cannot enter), and runs
# `SCRIPT --inner BINARY` as the session's user, passing the named variables
# that are set.
bench_run_as_user() {
    local repo=$1 script=$2 v
    shift 2
    log "cargo build --release"
    (cd "$repo" && cargo build --release --quiet --bin berth)
    bench_stage=$(mktemp -d -t berth-bench-bin.XXXXXX)
    trap 'rm -rf "$bench_stage"' EXIT
    # Caught (not fatal) so the EXIT trap runs; the user's side gets the same signal
    # from the terminal or from `timeout` and cleans up after itself first.
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local target=${CARGO_TARGET_DIR:-$repo/target}
    [[ $target == /* ]] || target=$repo/$target
    cp "$target/release/berth" "$bench_stage/berth"
    cp "$script" "$bench_stage/bench.sh"
    cp "$repo/bench/lib.sh" "$bench_stage/lib.sh"
    chmod 0755 "$bench_stage" "$bench_stage/berth" "$bench_stage/bench.sh"
    chmod 0644 "$bench_stage/lib.sh"
    local -a pass_env=("BERTH_BENCH_REV=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)")
    for v in "$@"; do
        [[ -z "${!v:-}" ]] || pass_env+=("$v=${!v}")
    done
    if berth_env_is_root && [[ "$bench_user" != root ]]; then
        log "measuring as $bench_user"
        berth_env_as_user "$bench_user" env "${pass_env[@]}" bash "$bench_stage/bench.sh" --inner "$bench_stage/berth"
    else
        env "${pass_env[@]}" bash "$bench_stage/bench.sh" --inner "$bench_stage/berth"
    fi
}
