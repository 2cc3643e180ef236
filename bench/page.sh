#!/usr/bin/env bash
# How fast a state change reaches the local web page: the real-browser test
# (tests/web.rs: headless Chromium through chromedriver, a real daemon, systemd
# --user and rootless Podman) run N times; each run prints how many ms after the
# unit became active (systemd's ActiveEnterTimestamp) the page showed the service
# running (the browser's clock when the event arrived). Prints every run and the
# median, against the goal of 100 ms. Also prints the page's weight.
#
#   bench/page.sh            (BERTH_BENCH_RUNS=N, default 5)
#
# As root: sets up the test user's session as scripts/test does and installs
# Chromium and chromedriver (scripts/test-env); as a desktop user: your session.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
runs=${BERTH_BENCH_RUNS:-5}
log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'bench/page.sh: error: %s\n' "$*" >&2
    exit 1
}
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
bench_prepare "$repo"
log "building the daemon and the browser test"
cargo build --quiet --bin berth
bin=$(cargo test --no-run --message-format=json --test web 2>/dev/null |
    grep '"kind":\["test"\]' | grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//')
[[ -n $bin ]] || die "cargo built no tests/web.rs program"
stage=$(mktemp -d /var/tmp/berth-bench-page.XXXXXX)
trap 'rm -rf "$stage"' EXIT
cp target/debug/berth "$bin" "$stage/"
chmod -R a+rX "$stage"
chmod 755 "$stage"
as() {
    if berth_env_is_root && [[ "$bench_user" != root ]]; then
        berth_env_as_user "$bench_user" "$@"
    else
        "$@"
    fi
}
results=()
for ((i = 1; i <= runs; i++)); do
    log "run $i of $runs"
    out=$(as env BERTH_BIN="$stage/berth" "$stage/$(basename "$bin")" --test-threads=1 --nocapture 2>&1) ||
        die "the browser test failed: $(tail -n 20 <<<"$out")"
    ms=$(sed -n 's/.*page latency: running shown \(-\{0,1\}[0-9]*\) ms.*/\1/p' <<<"$out" | head -n 1)
    [[ -n $ms ]] || die "the test printed no latency: $(tail -n 20 <<<"$out")"
    results+=("$ms")
done
median=$(printf '%s\n' "${results[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
weight=$(cat src/web/assets/* | wc -c)
echo
echo "berth page benchmark: $(git describe --always --dirty 2>/dev/null || echo '?'); $(nproc) CPUs; load $(cut -d' ' -f1 /proc/loadavg)"
printf '%-52s | %s\n' "unit active -> page shows running (ms)" "median ${median} (runs: ${results[*]})"
printf '%-52s | %s\n' "page first load (index.html, app.js, app.css, icon)" "$weight bytes"
if ((median <= 100)); then echo "goal: met (<= 100 ms)"; else echo "goal: NOT met (> 100 ms)"; fi
