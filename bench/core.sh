#!/usr/bin/env bash
# Measures berth's daemon against the issue's goals, on the real thing: a
# systemd user manager, its D-Bus and rootless Podman, with 20 services
# (bench-01..bench-20, the offline demo image, ports 18400..18419) running.
#
#   no-op reconcile with 20 services      goal <= 20 ms
#   idle daemon RSS with 20 services      goal <= 15 MiB
#
#   As root: sets up the test user's session and the images exactly as
#   scripts/test does (scripts/test-env), builds the release binary, and runs
#   the measurement as that user (BERTH_TEST_USER, default berth-ci).
#   As a desktop user: the same against your own session.
#
#     bench/core.sh
#
# The daemon gets its own temporary admin directory, state directory and API
# socket; only units named berth-bench-NN.service are touched. Everything is
# undone on exit (the 20 services disabled, the daemon stopped by its PID,
# temporary directories removed), also on failure or Ctrl-C.
#
# Knobs: BERTH_BENCH_RUNS (reconciles, default 100), BERTH_BENCH_IDLE (idle
# seconds before reading the RSS, default 10), BERTH_BENCH_DAEMON_ENV (extra
# VAR=value words for the daemon only, e.g. "MALLOC_ARENA_MAX=1").
set -euo pipefail

readonly N_SERVICES=20
readonly PORT_BASE=18400
readonly IMAGE=localhost/berth-demo:1
readonly GOAL_RECONCILE_MS=20
readonly GOAL_RSS_MIB=15

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'bench/core.sh: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# The measurement, run as the user that owns the session (no root needed).
#   core.sh --inner BERTH_BINARY
# ---------------------------------------------------------------------------

svc_name() { printf 'bench-%02d' "$1"; }

catalog_file() {
    local name=$1 port=$2
    cat <<EOF
name = "$name"
description = "berth benchmark service $name"

[[containers]]
name = "web"
image = "$IMAGE"
init = true

[[containers.ports]]
name = "http"
host = $port
container = 8080
EOF
}

# Median and p99 (nearest rank) of the numbers on stdin: "median p99 count".
stats() {
    sort -n | awk '{ v[NR] = $1 }
        END {
            if (NR == 0) { print "nan nan 0"; exit }
            m = int((NR + 1) / 2); p = int(NR * 0.99); if (p < NR * 0.99) p++; if (p < 1) p = 1
            printf "%s %s %d\n", v[m], v[p], NR
        }'
}

# "x.yyy" milliseconds from microseconds.
us_to_ms() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }

inner() {
    bench_daemon_init "$1"
    local runs=${BERTH_BENCH_RUNS:-100} idle=${BERTH_BENCH_IDLE:-10}
    local -a daemon_env=()
    read -r -a daemon_env <<<"${BERTH_BENCH_DAEMON_ENV:-}"

    podman image exists "$IMAGE" || die "image $IMAGE is missing (scripts/test-env builds it)"
    # Global, not local: the EXIT trap that cleans up runs after this function returned.
    unit_dir=${XDG_DATA_HOME:-$HOME/.local/share}/systemd/user
    work=$bench_work
    sock=$work/api.sock
    bin=$bench_bin

    names=()
    local i
    for ((i = 1; i <= N_SERVICES; i++)); do
        names+=("$(svc_name "$i")")
    done

    scrub() {
        local n removed=0
        for n in "${names[@]}"; do
            systemctl --user stop "berth-$n.service" >/dev/null 2>&1 || true
            systemctl --user reset-failed "berth-$n.service" >/dev/null 2>&1 || true
            if [[ -e "$unit_dir/berth-$n.service" ]]; then
                rm -f "$unit_dir/berth-$n.service"
                removed=1
            fi
        done
        ((removed == 0)) || systemctl --user daemon-reload
    }

    # shellcheck disable=SC2317 # run by the EXIT trap
    cleanup() {
        local rc=$? n
        trap - EXIT INT TERM
        set +e
        log "cleaning up"
        if bench_daemon_running; then
            for n in "${names[@]}"; do
                b disable "$n" >/dev/null 2>&1 || echo "bench/core.sh: disable $n failed" >&2
            done
            bench_daemon_stop
        fi
        # Whatever the daemon did not undo (it died, or disable failed).
        scrub
        bench_daemon_finish "$rc"
        exit "$rc"
    }
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    scrub
    for ((i = 1; i <= N_SERVICES; i++)); do
        catalog_file "$(svc_name "$i")" $((PORT_BASE + i - 1)) >"$work/etc/catalog.d/$(svc_name "$i").toml"
    done
    bench_daemon_start "${daemon_env[@]}"
    daemon_pid=$bench_daemon_pid

    log "enabling ${#names[@]} services"
    local t0=$SECONDS n
    for n in "${names[@]}"; do
        b enable "$n" --no-pull --settle 0 >/dev/null || die "berth enable $n failed"
    done
    log "enabled in $((SECONDS - t0)) s; waiting until all run"
    deadline=$((SECONDS + 120))
    local running
    while :; do
        running=$(b ls --json | grep -c '"state": "running"' || true)
        ((running >= N_SERVICES)) && break
        ((SECONDS < deadline)) || die "only $running of $N_SERVICES services run after 120 s"
        sleep 0.5
    done
    for ((i = 0; i < N_SERVICES; i++)); do
        curl -fsS --max-time 5 "http://127.0.0.1:$((PORT_BASE + i))/" | grep -q "berth demo" ||
            die "no demo page on port $((PORT_BASE + i))"
    done
    # Let the passes triggered by the start-up's unit changes (debounced) finish.
    sleep 2
    # The daemon's counters of writes to systemd, Podman and files.
    writes() {
        b info --json | sed -n 's/^ *"\(systemd\|podman\|file\)_writes": *\([0-9]*\).*/\1 \2/p' |
            tr '\n' ' ' | sed 's/ $//'
    }
    local before after
    before=$(writes)

    log "$runs reconciles through the CLI (berth reconcile --json)"
    : >"$work/server_us" && : >"$work/cli_us"
    local start end out dur bad=0
    for ((i = 0; i < runs; i++)); do
        start=$EPOCHREALTIME
        # Straight, without b's env and timeout processes: only berth's own cost is timed.
        out=$(BERTH_ETC_DIR="$work/etc" XDG_STATE_HOME="$work/state" BERTH_SOCKET="$sock" \
            "$bin" reconcile --json) || die "berth reconcile failed: $out"
        end=$EPOCHREALTIME
        echo $((${end//[.,]/} - ${start//[.,]/})) >>"$work/cli_us"
        dur=$(sed -n 's/^ *"duration_us": *\([0-9]*\).*/\1/p' <<<"$out")
        [[ -n "$dur" ]] || die "no duration_us in: $out"
        echo "$dur" >>"$work/server_us"
        if ! grep -q '"applied": \[\]' <<<"$out" || ! grep -q '"errors": \[\]' <<<"$out"; then
            bad=$((bad + 1))
            echo "bench/core.sh: reconcile $i was not a no-op: $out" >&2
        fi
    done

    local have_curl=0
    if command -v curl >/dev/null; then
        have_curl=1
        log "$runs reconciles over one kept-alive connection (curl --unix-socket, POST /v1/reconcile)"
        local -a urls=()
        for ((i = 0; i < runs; i++)); do
            urls+=(http://localhost/v1/reconcile)
        done
        # Each answer is one line of JSON, followed by curl's timing line.
        curl -sS --fail --max-time 120 --unix-socket "$sock" -X POST \
            -w '\n%{time_total}\n' "${urls[@]}" >"$work/curl.out" || die "curl against the API failed"
        awk 'NR % 2 == 0 { printf "%d\n", $1 * 1000000 }' "$work/curl.out" >"$work/rt_us"
        awk 'NR % 2 == 1' "$work/curl.out" >"$work/curl.json"
        sed -n 's/.*"duration_us":\([0-9]*\).*/\1/p' "$work/curl.json" >>"$work/server_us"
        local k=0
        while IFS= read -r out; do
            k=$((k + 1))
            if [[ "$out" != *'"applied":[]'* || "$out" != *'"errors":[]'* ]]; then
                bad=$((bad + 1))
                echo "bench/core.sh: API reconcile $k was not a no-op: $out" >&2
            fi
        done <"$work/curl.json"
        [[ "$k" -eq "$runs" ]] || die "expected $runs answers from curl, got $k"
    fi
    after=$(writes)
    local writes_ok=yes
    [[ "$before" == "$after" ]] || writes_ok="NO (before $before, after $after)"

    log "idle for $idle s, then reading /proc/$daemon_pid/status"
    local hz cpu0 cpu1 passes0 passes1
    hz=$(getconf CLK_TCK)
    # utime + stime in clock ticks (fields 14 and 15; the name in field 2 has no spaces here).
    cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$daemon_pid/stat"; }
    passes() { b info --json | sed -n 's/^ *"passes": *\([0-9]*\).*/\1/p'; }
    passes0=$(passes)
    cpu0=$(cpu_ticks)
    sleep "$idle"
    cpu1=$(cpu_ticks)
    passes1=$(passes)
    kill -0 "$daemon_pid" 2>/dev/null || die "the daemon died"
    local status rss hwm threads anon file
    status=$(cat "/proc/$daemon_pid/status")
    field() { awk -v k="$1:" '$1 == k { print $2 }' <<<"$status"; }
    rss=$(field VmRSS)
    hwm=$(field VmHWM)
    anon=$(field RssAnon)
    file=$(field RssFile)
    threads=$(field Threads)
    local pss
    pss=$(awk '$1 == "Pss:" { print $2 }' "/proc/$daemon_pid/smaps_rollup" 2>/dev/null || true)

    # ---- the table ----
    local sm sp rm rp cm cp count
    read -r sm sp count < <(stats <"$work/server_us")
    read -r cm cp _ < <(stats <"$work/cli_us")
    # yes: median and p99 within the goal; "median only": p99 over it; NO: median over it.
    ok_ms() {
        awk -v m="$1" -v p="$2" -v g="$3" \
            'BEGIN { print (p / 1000 <= g) ? "yes" : (m / 1000 <= g) ? "median only" : "NO" }'
    }
    row() { printf '%-44s %-32s %-10s %s\n' "$@"; }
    echo
    echo "berth daemon benchmark: $N_SERVICES services running ($IMAGE); berth ${BERTH_BENCH_REV:-?}"
    echo "kernel $(uname -r); $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg); daemon env: ${daemon_env[*]:-default}"
    row "measurement" "result" "goal" "ok?"
    printf '%s\n' "$(printf -- '-%.0s' {1..96})"
    row "no-op reconcile, server side (duration_us)" \
        "median $(us_to_ms "$sm") / p99 $(us_to_ms "$sp") ms" "<= ${GOAL_RECONCILE_MS} ms" "$(ok_ms "$sm" "$sp" "$GOAL_RECONCILE_MS") (n=$count)"
    if ((have_curl)); then
        read -r rm rp _ < <(stats <"$work/rt_us")
        row "no-op reconcile, API round trip (curl)" \
            "median $(us_to_ms "$rm") / p99 $(us_to_ms "$rp") ms" "<= ${GOAL_RECONCILE_MS} ms" "$(ok_ms "$rm" "$rp" "$GOAL_RECONCILE_MS") (n=$runs)"
    fi
    row "no-op reconcile, CLI call wall time" \
        "median $(us_to_ms "$cm") / p99 $(us_to_ms "$cp") ms" "(info)" "incl. process start (n=$runs)"
    row "every reconcile applied nothing" "$bad not no-op" "0" "$([[ $bad -eq 0 ]] && echo yes || echo NO)"
    row "no writes (systemd/podman/file counters)" "${after:-?}" "unchanged" "$writes_ok"
    row "idle daemon VmRSS after ${idle} s" \
        "$(awk -v k="$rss" 'BEGIN { printf "%.1f MiB", k / 1024 }')" "<= ${GOAL_RSS_MIB} MiB" \
        "$(awk -v k="$rss" -v g="$GOAL_RSS_MIB" 'BEGIN { print (k / 1024 <= g) ? "yes" : "NO" }')"
    row "  of which anonymous / file-backed" \
        "$(awk -v a="$anon" -v f="$file" 'BEGIN { printf "%.1f / %.1f MiB", a / 1024, f / 1024 }')" "" ""
    [[ -z "$pss" ]] || row "  proportional (Pss, shared pages split)" \
        "$(awk -v k="$pss" 'BEGIN { printf "%.1f MiB", k / 1024 }')" "(info)" ""
    row "daemon VmHWM (peak RSS)" "$(awk -v k="$hwm" 'BEGIN { printf "%.1f MiB", k / 1024 }')" "(info)" ""
    row "daemon threads" "$threads" "(info)" ""
    row "daemon CPU time while idle ${idle} s" \
        "$(awk -v t=$((cpu1 - cpu0)) -v hz="$hz" 'BEGIN { printf "%d ms", t * 1000 / hz }')" "(info)" \
        "$((passes1 - passes0)) reconcile passes meanwhile"
    echo
    [[ $bad -eq 0 ]] || die "$bad reconcile(s) were not no-ops"
}

if [[ "${1:-}" == --inner ]]; then
    # shellcheck source=bench/lib.sh
    . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
    inner "${2:?--inner BERTH_BINARY}"
    exit 0
fi

# ---------------------------------------------------------------------------
# Set-up: environment, build, and the hand-over to the session's user.
# ---------------------------------------------------------------------------

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
bench_prepare "$repo"
bench_run_as_user "$repo" "$repo/bench/core.sh" BERTH_BENCH_RUNS BERTH_BENCH_IDLE BERTH_BENCH_DAEMON_ENV
