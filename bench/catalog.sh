#!/usr/bin/env bash
# Measures live reload on the real thing (systemd user manager, rootless Podman): a
# catalog of 200 services in the admin folder (bench-cat-001..200, ports
# 18700..18899), one of them running (the offline demo image).
#
#   a catalog change in force: the running service's file is rewritten (a changed
#   env value, so its unit changes) and nothing else is done; measured from the
#   write until its unit file is rewritten, and until its container has restarted,
#   against the same container's own restart (`systemctl --user restart`).
#     goal: in force within 1 s of the write plus the service's own restart
#   the daemon's CPU time for that reload of 200 files (read, validate, render,
#   plan, apply), from /proc/PID/task/*/schedstat (all its threads, the blocking
#   pool that reads the files included).
#     goal: <= 20 ms
#
#   As root: sets up the test user's session and images as scripts/test does,
#   builds the release binary, measures as that user (BERTH_TEST_USER).
#   As a desktop user: the same against your own session.
#
#     bench/catalog.sh
#
# Knobs: BERTH_BENCH_ROUNDS (changes, default 10). Only units named
# berth-bench-cat-*.service are touched; everything is undone on exit.
set -euo pipefail

readonly N_SERVICES=200
readonly PORT_BASE=18700
readonly IMAGE=localhost/berth-demo:1
readonly GOAL_EXTRA_MS=1000
readonly GOAL_CPU_MS=20

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'bench/catalog.sh: error: %s\n' "$*" >&2
    exit 1
}

svc_name() { printf 'bench-cat-%03d' "$1"; }

catalog_file() {
    local name=$1 port=$2 mode=$3
    cat <<EOF
name = "$name"
description = "berth reload benchmark service $name"

[[containers]]
name = "web"
image = "$IMAGE"
init = true
env = { MODE = "$mode" }

[[containers.ports]]
name = "http"
host = $port
container = 8080
EOF
}

now_us() { local t=$EPOCHREALTIME; echo "${t//[.,]/}"; }

# CPU time of every thread of a process, in ns.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%d\n", s }'; }

started_at() { podman container inspect --format '{{.State.StartedAt}}' "$1" 2>/dev/null || true; }

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else print v[int((NR + 1) / 2)] }'; }

inner() {
    bench_daemon_init "$1"
    local rounds=${BERTH_BENCH_ROUNDS:-10} i
    podman image exists "$IMAGE" || die "image $IMAGE is missing (scripts/test-env builds it)"
    # Globals: the EXIT trap's cleanup runs after this function has returned.
    unit_dir=${XDG_DATA_HOME:-$HOME/.local/share}/systemd/user
    work=$bench_work
    first=$(svc_name 1)
    unit=berth-$first.service
    ctr=berth-$first

    cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        set +e
        log "cleaning up"
        if bench_daemon_running; then
            b disable "$first" >/dev/null 2>&1 || echo "bench/catalog.sh: disable failed" >&2
            bench_daemon_stop
        fi
        systemctl --user stop "$unit" >/dev/null 2>&1
        if [[ -e "$unit_dir/$unit" ]]; then
            rm -f "$unit_dir/$unit"
            systemctl --user daemon-reload
        fi
        bench_daemon_finish "$rc"
        exit "$rc"
    }
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    for ((i = 1; i <= N_SERVICES; i++)); do
        catalog_file "$(svc_name "$i")" $((PORT_BASE + i - 1)) one >"$work/etc/catalog.d/$(svc_name "$i").toml"
    done
    bench_daemon_start
    local pid=$bench_daemon_pid
    b enable "$first" --no-pull --settle 0 >/dev/null || die "berth enable $first failed"
    local deadline=$((SECONDS + 60))
    until curl -fsS --max-time 2 "http://127.0.0.1:$PORT_BASE/" | grep -q "berth demo"; do
        ((SECONDS < deadline)) || die "$first does not answer"
        sleep 0.2
    done
    sleep 2

    : >"$work/unit_ms" && : >"$work/restart_ms" && : >"$work/own_ms" && : >"$work/cpu_ms"
    local before t0 cpu0 t1 t2 cpu1 mode file=$work/etc/catalog.d/$first.toml
    for ((i = 1; i <= rounds; i++)); do
        mode=round$i
        before=$(started_at "$ctr")
        cpu0=$(cpu_ns "$pid")
        catalog_file "$first" "$PORT_BASE" "$mode" >"$file.tmp"
        t0=$(now_us)
        mv "$file.tmp" "$file"
        until grep -q "MODE=$mode" "$unit_dir/$unit" 2>/dev/null; do
            (($(now_us) - t0 < 10000000)) || die "round $i: the unit was not rewritten within 10 s"
            sleep 0.005
        done
        t1=$(now_us)
        until [[ "$(started_at "$ctr")" != "$before" && -n "$(started_at "$ctr")" ]]; do
            (($(now_us) - t0 < 30000000)) || die "round $i: no restart within 30 s"
            sleep 0.02
        done
        t2=$(now_us)
        # The pass is over once the unit is active again; then the daemon is idle.
        until [[ "$(systemctl --user is-active "$unit")" == active ]]; do sleep 0.02; done
        sleep 0.5
        cpu1=$(cpu_ns "$pid")
        echo $(((t1 - t0) / 1000)) >>"$work/unit_ms"
        echo $(((t2 - t0) / 1000)) >>"$work/restart_ms"
        # Less the idle daemon's own ticks over the same time (health refresh, probes).
        echo $(((cpu1 - cpu0) / 1000000)) >>"$work/cpu_ms"

        before=$(started_at "$ctr")
        t0=$(now_us)
        systemctl --user restart "$unit"
        until [[ "$(started_at "$ctr")" != "$before" && -n "$(started_at "$ctr")" ]]; do
            sleep 0.02
        done
        echo $((($(now_us) - t0) / 1000)) >>"$work/own_ms"
        sleep 1
    done

    local idle0 idle1
    idle0=$(cpu_ns "$pid")
    sleep 3
    idle1=$(cpu_ns "$pid")
    local um rm om cm
    um=$(median <"$work/unit_ms")
    rm=$(median <"$work/restart_ms")
    om=$(median <"$work/own_ms")
    cm=$(median <"$work/cpu_ms")
    echo
    echo "berth reload benchmark: $N_SERVICES services in the admin folder, 1 running; berth ${BERTH_BENCH_REV:-?}"
    echo "kernel $(uname -r); $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg); $rounds rounds"
    printf '%-52s %-12s %s\n' "measurement (median)" "result" "runs (ms)"
    printf '%-52s %-12s %s\n' "write → unit file rewritten" "$um ms" "$(tr '\n' ' ' <"$work/unit_ms")"
    printf '%-52s %-12s %s\n' "write → container restarted" "$rm ms" "$(tr '\n' ' ' <"$work/restart_ms")"
    printf '%-52s %-12s %s\n' "the service's own restart (systemctl --user)" "$om ms" "$(tr '\n' ' ' <"$work/own_ms")"
    printf '%-52s %-12s %s\n' "daemon CPU, reload + pass + restart (all threads)" "$cm ms" "$(tr '\n' ' ' <"$work/cpu_ms")"
    printf '%-52s %-12s\n' "daemon CPU while idle, for comparison" "$(((idle1 - idle0) / 1000000)) ms in 3 s"
    local extra=$((rm - om))
    echo
    echo "in force within the write + ${GOAL_EXTRA_MS} ms + the service's own restart: $([[ $extra -le $GOAL_EXTRA_MS ]] && echo yes || echo NO) (berth added $extra ms)"
    echo "reload CPU <= ${GOAL_CPU_MS} ms: $([[ $cm -le $GOAL_CPU_MS ]] && echo yes || echo NO)"
}

if [[ "${1:-}" == --inner ]]; then
    . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
    inner "${2:?--inner BERTH_BINARY}"
    exit 0
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$repo/bench/lib.sh"
bench_prepare "$repo"
bench_run_as_user "$repo" "$repo/bench/catalog.sh" BERTH_BENCH_ROUNDS
