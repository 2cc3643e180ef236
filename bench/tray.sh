#!/usr/bin/env bash
# What berth-tray costs and how fast it is, against a real tray host and a real daemon:
#
#   - idle RSS of the release berth-tray (goal: <= 12 MiB), following a daemon with a
#     running service, its menu read once by the host;
#   - wakeups while idle: the context switches of all its threads over the idle window (none
#     from timers is the goal), with the daemon up and quiet, and with the daemon gone (the reconnect
#     backoff: one attempt every 5 s);
#   - latency: the integration test (tests/tray.rs) run N times; each run prints how many
#     ms after systemd saw the unit active the tray's menu showed the service running (the
#     first dbusmenu signal after which GetLayout says so). Goal: <= 100 ms.
#
#   bench/tray.sh            (BERTH_BENCH_RUNS=N, default 5; BERTH_BENCH_IDLE=SECS, the idle
#                             window, default 10: 65 spans the daemon's 60 s safety pass)
#
# As root: sets up the test user's session as scripts/test does (scripts/test-env, which
# also installs status-notifier-watcher); as a desktop user: your session. Each run uses a
# private D-Bus session of its own (the tray host), never the desktop's.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'bench/tray.sh: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# The inner side, as the session's user: bench.sh --inner STAGE
# ---------------------------------------------------------------------------
if [[ "${1:-}" == --inner ]]; then
    stage=$2
    idle=${BERTH_BENCH_IDLE:-10}
    # shellcheck source=bench/lib.sh
    . "$stage/lib.sh"
    command -v status-notifier-watcher >/dev/null ||
        die "no status-notifier-watcher (Debian's haskell-status-notifier-item-utils)"
    bench_daemon_init "$stage/berth"
    pids=()
    cleanup() {
        local rc=$? p
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        bench_daemon_stop
        b disable bench-tray >/dev/null 2>&1 || true
        bench_daemon_finish "$rc"
    }
    trap cleanup EXIT
    cat >"$bench_work/etc/config.toml" <<'EOF'
[web]
listen = "127.0.0.1:18224"
EOF
    cat >"$bench_work/etc/catalog.d/bench-tray.toml" <<'EOF'
name = "bench-tray"
description = "the tray benchmark's page"
[[containers]]
name = "web"
image = "localhost/berth-demo:1"
init = true
[[containers.ports]]
name = "http"
host = 18223
container = 8080
EOF
    bench_daemon_start
    b enable bench-tray >/dev/null || die "cannot enable bench-tray: $(b status bench-tray)"

    bus=$bench_work/bus
    dbus-daemon --session --nofork --address "unix:path=$bus" </dev/null >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do [[ -S $bus ]] && break; sleep 0.1; done
    [[ -S $bus ]] || die "the private dbus-daemon did not start"
    export DBUS_SESSION_BUS_ADDRESS=unix:path=$bus
    status-notifier-watcher </dev/null >/dev/null 2>&1 &
    pids+=($!)
    sleep 0.5
    BERTH_SOCKET=$bench_work/api.sock "$stage/berth-tray" </dev/null 2>"$bench_work/tray.log" &
    tray=$!
    pids+=("$tray")
    for _ in $(seq 100); do grep -q "following berth's events" "$bench_work/tray.log" && break; sleep 0.1; done
    grep -q "following berth's events" "$bench_work/tray.log" ||
        die "berth-tray did not connect: $(cat "$bench_work/tray.log")"
    # ksni's name for the item: PID and instance number.
    item=org.kde.StatusNotifierItem-$tray-1
    # The host reads the menu once, as a panel does when it shows the item.
    busctl --address="$DBUS_SESSION_BUS_ADDRESS" call "$item" /MenuBar com.canonical.dbusmenu \
        GetLayout iias -- 0 -1 0 >"$bench_work/layout.txt" ||
        die "GetLayout failed"
    # (busctl prints non-ASCII bytes as octal escapes: the dash between name and state.)
    grep -q "bench-tray [^\"]* running" "$bench_work/layout.txt" ||
        die "the menu does not show bench-tray running: $(cat "$bench_work/layout.txt")"
    # Settle: tokio's blocking-pool thread, used once at start, leaves after 10 s idle.
    sleep 12

    # Context switches of every thread, one "tid count" line each.
    switches() {
        local t
        for t in /proc/"$1"/task/*; do
            awk -v tid="${t##*/}" '/^(non)?voluntary_ctxt_switches/ { n += $2 } END { print tid, n }' "$t/status"
        done
    }
    # Wakeups between two samples: the growth of each thread's count (a thread that is new
    # in the second counts whole; one that left meanwhile is lost, so threads are reported).
    wakeups() {
        awk 'NR == FNR { before[$1] = $2; next } { n += $2 - before[$1] } END { print n + 0 }' "$1" "$2"
    }
    rss_kib=$(awk '/^VmRSS/ { print $2 }' /proc/"$tray"/status)
    anon_kib=$(awk '/^RssAnon/ { print $2 }' /proc/"$tray"/status)
    threads=$(awk '/^Threads/ { print $2 }' /proc/"$tray"/status)
    switches "$tray" >"$bench_work/s0"
    sleep "$idle"
    switches "$tray" >"$bench_work/s1"
    up_wakeups=$(wakeups "$bench_work/s0" "$bench_work/s1")
    threads_after=$(awk '/^Threads/ { print $2 }' /proc/"$tray"/status)

    bench_daemon_stop
    # The backoff reaches its ceiling (5 s) about 13 s after the loss.
    sleep 14
    switches "$tray" >"$bench_work/s2"
    sleep "$idle"
    switches "$tray" >"$bench_work/s3"
    down_wakeups=$(wakeups "$bench_work/s2" "$bench_work/s3")
    kill -0 "$tray" 2>/dev/null || die "berth-tray exited: $(cat "$bench_work/tray.log")"
    down_rss_kib=$(awk '/^VmRSS/ { print $2 }' /proc/"$tray"/status)
    [[ $threads == "$threads_after" ]] || threads="$threads→$threads_after"
    printf 'rss_kib=%s anon_kib=%s threads=%q up_wakeups=%s down_wakeups=%s down_rss_kib=%s size=%s\n' \
        "$rss_kib" "$anon_kib" "$threads" "$up_wakeups" "$down_wakeups" "$down_rss_kib" \
        "$(stat -c %s "$stage/berth-tray")"
    exit 0
fi

# ---------------------------------------------------------------------------
# The outer side, from the checkout.
# ---------------------------------------------------------------------------
cd "$repo"
runs=${BERTH_BENCH_RUNS:-5}
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
bench_prepare "$repo"
log "building berth (debug), berth-tray (release) and tests/tray.rs"
cargo build --quiet --bin berth
cargo build --quiet --release -p berth-tray
test_bin=$(cargo test --no-run --message-format=json --test tray 2>/dev/null |
    grep '"kind":\["test"\]' | grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//')
[[ -n $test_bin ]] || die "cargo built no tests/tray.rs program"
target=${CARGO_TARGET_DIR:-$repo/target}
stage=$(mktemp -d /var/tmp/berth-bench-tray.XXXXXX)
trap 'rm -rf "$stage"' EXIT
cp "$target/debug/berth" "$target/release/berth-tray" "$test_bin" "$stage/"
cp "$repo/bench/tray.sh" "$stage/bench.sh"
cp "$repo/bench/lib.sh" "$stage/lib.sh"
chmod -R a+rX "$stage"
chmod 755 "$stage"
as() {
    if berth_env_is_root && [[ "$bench_user" != root ]]; then
        berth_env_as_user "$bench_user" "$@"
    else
        "$@"
    fi
}
log "idle: RSS and wakeups of the release berth-tray"
idle_secs=${BERTH_BENCH_IDLE:-10}
measured=$(as env BERTH_BENCH_IDLE="$idle_secs" bash "$stage/bench.sh" --inner "$stage" | tail -n 1)
eval "$measured"
results=()
for ((i = 1; i <= runs; i++)); do
    log "latency run $i of $runs"
    out=$(as env BERTH_BIN="$stage/berth" "$stage/$(basename "$test_bin")" --test-threads=1 --nocapture \
        --exact the_tray_shows_every_service_turns_one_on_and_survives_the_daemon_restarting 2>&1) ||
        die "the tray test failed: $(tail -n 30 <<<"$out")"
    ms=$(sed -n 's/.*tray latency: running shown \(-\{0,1\}[0-9]*\) ms.*/\1/p' <<<"$out" | head -n 1)
    [[ -n $ms ]] || die "the test printed no latency: $(tail -n 20 <<<"$out")"
    results+=("$ms")
done
median=$(printf '%s\n' "${results[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
echo
echo "berth tray benchmark: $(git describe --always --dirty 2>/dev/null || echo '?'); $(nproc) CPUs; load $(cut -d' ' -f1 /proc/loadavg)"
printf '%-52s | %s\n' "idle RSS, daemon up (release build)" "$((rss_kib / 1024)).$(((rss_kib % 1024) * 10 / 1024)) MiB (anonymous $((anon_kib / 1024)).$(((anon_kib % 1024) * 10 / 1024)) MiB; threads: $threads)"
printf '%-52s | %s\n' "idle RSS, daemon gone" "$((down_rss_kib / 1024)).$(((down_rss_kib % 1024) * 10 / 1024)) MiB"
printf '%-52s | %s\n' "wakeups in $idle_secs s idle, daemon up" "$up_wakeups"
printf '%-52s | %s\n' "wakeups in $idle_secs s, daemon gone (retry every 5 s)" "$down_wakeups"
printf '%-52s | %s\n' "unit active -> tray menu shows running (ms)" "median ${median} (runs: ${results[*]})"
printf '%-52s | %s\n' "berth-tray binary (release)" "$((size / 1024)) KiB"
goals=met
((rss_kib <= 12 * 1024)) || goals="NOT met (RSS)"
((up_wakeups == 0)) || goals="NOT met (idle wakeups)"
((median <= 100)) || goals="NOT met (latency)"
echo "goals: $goals (<= 12 MiB, no idle wakeups, <= 100 ms)"
