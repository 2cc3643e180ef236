#!/usr/bin/env bash
# Measures berth's stable ports (the proxy's data path) on the real thing: a
# berth daemon of the test user serving a rootless Podman container, against
# going to the container's published port directly and against the usual
# peers, side by side in one run on loopback:
#
#   direct                  the container's published port (Podman's own port
#                           forwarder, rootlessport or pasta, in front of it)
#   berth                   the service's stable port, served by the daemon
#                           (straight into the container's network namespace)
#   systemd-socket-proxyd   systemd's socket-activated proxy  } each in front
#   socat                   one forked process per connection } of the
#   haproxy                 mode tcp, splice-auto, one thread } published port
#
#   bulk:  iperf3 -t 5, one stream, Gbit/s
#   HTTP:  wrk -t2 -c16 and -c64, 5 s, keep-alive, against nginx serving a
#          small static page; req/s with p50/p99 latency
#   cold:  an on-demand service's first byte through berth, against the
#          container's own start (`podman run` of the same image to its first
#          answer); median of BERTH_BENCH_COLD_RUNS runs
#
#   goals: berth >= 0.85x direct throughput, >= 0.8x direct req/s at both
#          concurrencies, ahead of every peer in the same run; cold first
#          byte <= the container's own start + 50 ms.
#
#   A second table gives each proxy's own CPU time per GB and per request:
#   far less disturbed by other work on the machine than the rates. For
#   "direct" it is Podman's forwarder, which the peers cross as well.
#
#     bench/proxy.sh
#
# As root: installs the tools with apt-get (nginx-light or nginx, iperf3, wrk,
# socat, haproxy), sets up the test user's session and images as scripts/test
# does (scripts/test-env), builds an offline image with nginx and iperf3 from
# the host's own binaries (localhost/berth-bench-web:1, nothing is pulled),
# builds berth with `cargo build --release`, and measures as the test user
# (BERTH_TEST_USER, default berth-ci). As a desktop user: the same in your
# own session, after installing the tools the script names.
#
# Everything listens on 127.0.0.1 only, ports BERTH_BENCH_PORT (default 18600)
# to +50. The daemon gets its own temporary admin and state directories; only
# the units berth-bench-web and berth-bench-cold are touched. Every process
# started here is stopped by its PID (its process group, for socat's
# per-connection children) on exit, also on failure or Ctrl-C. Each client run
# is bounded by `timeout`; the whole measurement takes about two minutes.
#
# Each measurement runs for all paths back to back (bulk for every path, then
# c16 for every path, then c64), so that one column compares paths under the
# same conditions. On a shared or noisy machine use more rounds: the order of
# the paths rotates per round and the table shows medians.
#
# Storm (BERTH_BENCH_STORM=1, about 90 s more): the berth path again under a
# reconcile storm (another service enabled and disabled in a loop: unit files,
# state file and secrets written with fsync, daemon-reloads, starts, stops),
# once with the stable ports beside the engine on berth's one thread and once
# on a thread of their own (BERTH_PROXY_THREAD=1), against the same without a
# storm: which layout keeps the data path steady while the engine works.
#
# Knobs: BERTH_BENCH_ROUNDS (default 1; each adds about 90 s), BERTH_BENCH_SECS
# (seconds per iperf3 and wrk run, default 5), BERTH_BENCH_PORT (first port,
# default 18600), BERTH_BENCH_PATHS (which paths, default "direct berth
# socket-proxyd socat haproxy"; "none" measures only cold starts),
# BERTH_BENCH_COLD_RUNS (default 5, 0 skips).
set -euo pipefail

readonly SECS=${BERTH_BENCH_SECS:-5}
readonly PORT=${BERTH_BENCH_PORT:-18600}
PATHS=${BERTH_BENCH_PATHS:-direct berth socket-proxyd socat haproxy}
[[ $PATHS != none ]] || PATHS=""
readonly PATHS
readonly ROUNDS=${BERTH_BENCH_ROUNDS:-1}
readonly COLD_RUNS=${BERTH_BENCH_COLD_RUNS:-5}
readonly STORM=${BERTH_BENCH_STORM:-0}
readonly GOAL_BULK=0.85
readonly GOAL_RPS=0.80
readonly GOAL_COLD_MS=50
readonly PROXYD=/lib/systemd/systemd-socket-proxyd
readonly WEB_IMAGE=localhost/berth-bench-web:1
readonly COLD_IMAGE=localhost/berth-demo:1

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'bench/proxy.sh: error: %s\n' "$*" >&2
    exit 1
}

missing_packages() {
    local -a pkgs=()
    command -v nginx >/dev/null || pkgs+=(nginx)
    command -v iperf3 >/dev/null || pkgs+=(iperf3)
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v socat >/dev/null || pkgs+=(socat)
    command -v haproxy >/dev/null || pkgs+=(haproxy)
    command -v curl >/dev/null || pkgs+=(curl)
    { [[ -x $PROXYD ]] && command -v systemd-socket-activate >/dev/null; } || pkgs+=(systemd)
    printf '%s\n' "${pkgs[@]}"
}

# ===========================================================================
# The measurement, run as the user that owns the session (no root needed).
#   proxy.sh --inner BERTH_BINARY
# ===========================================================================

pids=()
declare -A group
# Ports: HTTP on even offsets, iperf3 on the odd one next to it. The direct
# ones are the container's published ports, known once it runs.
declare -A http_port=([berth]=$((PORT + 10)) [socket-proxyd]=$((PORT + 20))
    [socat]=$((PORT + 30)) [haproxy]=$((PORT + 40)))
declare -A bulk_port=([berth]=$((PORT + 11)) [socket-proxyd]=$((PORT + 21))
    [socat]=$((PORT + 31)) [haproxy]=$((PORT + 41)))
readonly COLD_PORT=$((PORT + 12)) COLD_DIRECT_PORT=$((PORT + 13))
forwarder=""

inner_cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    set +e
    for pid in "${pids[@]}"; do
        # Each was started as its own process group leader (setsid): the group
        # holds socat's per-connection children.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    podman rm -f -t 0 berth-bench-cold-direct >/dev/null 2>&1
    storm_stop
    if bench_daemon_running; then
        b disable bench-storm >/dev/null 2>&1 || true
        b disable bench-web >/dev/null 2>&1 || echo "bench/proxy.sh: disable bench-web failed" >&2
        b disable bench-cold >/dev/null 2>&1 || echo "bench/proxy.sh: disable bench-cold failed" >&2
        bench_daemon_stop
    fi
    bench_daemon_finish "$rc"
    exit "$rc"
}

# start NAME COMMAND...: runs COMMAND in the background in its own process
# group (PGID = PID), output to $bench_work/NAME.log.
start() {
    local name=$1
    shift
    setsid "$@" >"$bench_work/$name.log" 2>&1 &
    pids+=("$!")
    group[$name]=$!
}

# CPU time (user + system, of exited children too) in clock ticks of PIDS.
ticks_of() {
    local pid t=0
    for pid in "$@"; do
        t=$((t + $(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}

# CPU time used so far by what serves PATH's KIND port: berth's daemon and its
# namespace helpers, Podman's forwarder for "direct", else the process group
# started for the peer.
ticks() {
    local -a p=()
    case $1 in
    berth) mapfile -t p < <(echo "$bench_daemon_pid"; pgrep -P "$bench_daemon_pid" || true) ;;
    direct) [[ -z $forwarder ]] || p=("$forwarder") ;;
    *) [[ -z ${group[$1-$2]:-} ]] || mapfile -t p < <(pgrep -g "${group[$1-$2]}" || true) ;;
    esac
    ticks_of "${p[@]}"
}

wait_port() {
    local port=$1 name=$2
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    die "$name did not listen on 127.0.0.1:$port; its log:$(printf '\n')$(cat "$bench_work/$name.log" 2>/dev/null)"
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

web_catalog() {
    cat <<CAT
name = "bench-web"
description = "proxy benchmark: nginx (small page) and iperf3 -s"

[[containers]]
name = "web"
image = "$WEB_IMAGE"
init = true
user = "1000:1000"
read_only = true
tmpfs = ["/tmp"]
entrypoint = "/bin/sh"
command = ["-c", "iperf3 -s -p 5201 & exec nginx -p /tmp/ -c /etc/bench/nginx.conf -e stderr -g 'daemon off;'"]

[[containers.ports]]
name = "http"
host = ${http_port[berth]}
container = 8080

[[containers.ports]]
name = "bulk"
host = ${bulk_port[berth]}
container = 5201
CAT
}

cold_catalog() {
    cat <<CAT
name = "bench-cold"
description = "proxy benchmark: an on-demand page"
on_demand = true
idle_stop = "2s"

[[containers]]
name = "web"
image = "$COLD_IMAGE"
init = true

[[containers.ports]]
name = "http"
host = $COLD_PORT
container = 8080
CAT
}

storm_catalog() {
    cat <<CAT
name = "bench-storm"
description = "proxy benchmark: toggled on and off to keep the engine busy"
secrets = ["token"]

[[containers]]
name = "web"
image = "$COLD_IMAGE"
init = true
env = { TOKEN = "\${secret.token}" }

[[containers.ports]]
name = "http"
host = $((PORT + 14))
container = 8080
CAT
}

storm_pid=""

# Keeps the engine busy until storm_stop: bench-storm enabled and disabled in a loop.
storm_start() {
    setsid bash -c 'while :; do "$@" enable bench-storm --no-pull --settle 0; "$@" disable bench-storm; done' \
        storm env BERTH_ETC_DIR="$bench_work/etc" XDG_STATE_HOME="$bench_work/state" \
        BERTH_SOCKET="$bench_work/api.sock" "$bench_bin" >"$bench_work/storm.log" 2>&1 &
    storm_pid=$!
    pids+=("$storm_pid")
}

storm_stop() {
    [[ -n $storm_pid ]] || return 0
    kill -TERM -- "-$storm_pid" 2>/dev/null || true
    wait "$storm_pid" 2>/dev/null || true
    storm_pid=""
}

# How many toggles the storm made so far (passes with writes, as the daemon counts them).
storm_writes() {
    b info --json | sed -n 's/^ *"file_writes": *\([0-9]*\).*/\1/p'
}

# berth's path alone under each runtime layout, with and without a storm.
storm_compare() {
    local layout storm v w0 w1
    declare -A sg s16 s64 sw
    storm_catalog >"$bench_work/etc/catalog.d/bench-storm.toml"
    for layout in single thread; do
        bench_daemon_stop
        if [[ $layout == thread ]]; then
            bench_daemon_start BERTH_PROXY_THREAD=1
        else
            # shellcheck disable=SC2119 # no extra environment for the daemon here
            bench_daemon_start
        fi
        local deadline=$((SECONDS + 60))
        until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:${http_port[berth]}/" 2>/dev/null; do
            ((SECONDS < deadline)) || die "no page through berth within 60 s after a restart"
            sleep 0.2
        done
        for storm in quiet storm; do
            w0=$(storm_writes)
            [[ $storm == quiet ]] || storm_start
            sleep 1
            log "storm comparison: $layout, $storm: iperf3, wrk -c16, wrk -c64"
            sg[$layout-$storm]=$(bulk "${bulk_port[berth]}")
            http "${http_port[berth]}" 16 1 >/dev/null
            s16[$layout-$storm]=$(http "${http_port[berth]}" 16)
            s64[$layout-$storm]=$(http "${http_port[berth]}" 64)
            storm_stop
            w1=$(storm_writes)
            sw[$layout-$storm]=$((w1 - w0))
            b disable bench-storm >/dev/null 2>&1 || true
        done
    done
    echo
    printf '%-22s | %13s | %26s | %26s | %s\n' "berth, layout / engine" "iperf3 Gbit/s" \
        "wrk c16 req/s (p50/p99)" "wrk c64 req/s (p50/p99)" "engine file writes"
    printf -- '-----------------------|---------------|----------------------------|----------------------------|-------------------\n'
    for layout in single thread; do
        for storm in quiet storm; do
            local r16 a16 b16 r64 a64 b64
            read -r r16 a16 b16 _ <<<"${s16[$layout-$storm]}"
            read -r r64 a64 b64 _ <<<"${s64[$layout-$storm]}"
            printf '%-22s | %13s | %26s | %26s | %s\n' "$layout, $storm" "${sg[$layout-$storm]}" \
                "$(printf '%.0f (%s/%s)' "$r16" "$a16" "$b16" 2>/dev/null || echo nan)" \
                "$(printf '%.0f (%s/%s)' "$r64" "$a64" "$b64" 2>/dev/null || echo nan)" \
                "${sw[$layout-$storm]}"
        done
    done
}

# The host port Podman published for the bench container's CONTAINER_PORT.
published() {
    podman port berth-bench-web "$1/tcp" | sed -n 's/^127\.0\.0\.1:\([0-9]*\)$/\1/p' | head -n 1
}

# Podman's port forwarder of the bench container: the rootlessport process in
# the container's network namespace (Podman 4 with slirp4netns); empty with pasta.
find_forwarder() {
    local ctr ns pid
    ctr=$(podman inspect -f '{{.State.Pid}}' berth-bench-web) || return 0
    ns=$(readlink "/proc/$ctr/ns/net") || return 0
    for pid in $(pgrep -x rootlessport || true); do
        [[ $(readlink "/proc/$pid/ns/net" 2>/dev/null) == "$ns" ]] && echo "$pid" && return 0
    done
    return 0
}

# start_pair NAME PATH COMMAND...: runs COMMAND twice, once per backend, with
# @LISTEN@ and @TO@ in its words replaced by that path's listening port and the
# published port.
start_pair() {
    local name=$1 path=$2 kind listen to w
    shift 2
    for kind in http bulk; do
        if [[ $kind == http ]]; then
            listen=${http_port[$path]} to=${http_port[direct]}
        else
            listen=${bulk_port[$path]} to=${bulk_port[direct]}
        fi
        local -a cmd=()
        for w in "$@"; do
            w=${w//@LISTEN@/$listen}
            cmd+=("${w//@TO@/$to}")
        done
        start "$name-$kind" "${cmd[@]}"
        wait_port "$listen" "$name-$kind"
    done
}

start_socket_proxyd() {
    start_pair socket-proxyd socket-proxyd systemd-socket-activate -l 127.0.0.1:@LISTEN@ \
        "$PROXYD" --connections-max=1024 127.0.0.1:@TO@
}

start_socat() {
    start_pair socat socat socat \
        TCP4-LISTEN:@LISTEN@,bind=127.0.0.1,reuseaddr,fork,backlog=1024,nodelay \
        TCP4:127.0.0.1:@TO@,nodelay
}

start_haproxy() {
    cat >"$bench_work/haproxy.cfg" <<CFG
global
    maxconn 4096
    nbthread 1
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen http
    bind 127.0.0.1:${http_port[haproxy]}
    server nginx 127.0.0.1:${http_port[direct]}
listen bulk
    bind 127.0.0.1:${bulk_port[haproxy]}
    server iperf3 127.0.0.1:${bulk_port[direct]}
CFG
    start haproxy haproxy -db -f "$bench_work/haproxy.cfg"
    group[haproxy-http]=${group[haproxy]}
    group[haproxy-bulk]=${group[haproxy]}
    wait_port "${http_port[haproxy]}" haproxy
    wait_port "${bulk_port[haproxy]}" haproxy
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Milliseconds from `podman run` of the cold image until its page answers.
cold_direct_once() {
    local t0 t1
    podman rm -f -t 0 berth-bench-cold-direct >/dev/null 2>&1 || true
    t0=$(now_ms)
    podman run -d --rm --name berth-bench-cold-direct --init --cap-drop=all \
        -p "127.0.0.1:$COLD_DIRECT_PORT:8080" "$COLD_IMAGE" >/dev/null
    until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$COLD_DIRECT_PORT/" 2>/dev/null; do
        (($(now_ms) - t0 < 30000)) || die "the cold image did not answer within 30 s"
    done
    t1=$(now_ms)
    podman rm -f -t 0 berth-bench-cold-direct >/dev/null 2>&1 || true
    echo $((t1 - t0))
}

# Milliseconds to the first byte of the on-demand service while it is stopped.
cold_berth_once() {
    local deadline=$((SECONDS + 60)) s
    until [[ $(systemctl --user is-active berth-bench-cold.service 2>/dev/null) != active ]]; do
        ((SECONDS < deadline)) || die "bench-cold was not stopped for idleness within 60 s"
        sleep 0.2
    done
    # Settled: idle in berth's eyes too.
    until b status bench-cold --json | grep -q '"state": "idle"'; do
        ((SECONDS < deadline)) || die "bench-cold is not idle: $(b status bench-cold)"
        sleep 0.2
    done
    s=$(curl -fsS -o /dev/null --max-time 30 -w '%{time_starttransfer}' "http://127.0.0.1:$COLD_PORT/") ||
        die "no answer from the on-demand service"
    awk -v s="$s" 'BEGIN { printf "%d\n", s * 1000 + 0.5 }'
}

median_of() { grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "nan") }'; }

# Gbit/s received by iperf3 through PORT.
bulk() {
    local out
    out=$(timeout $((SECS + 15)) iperf3 -c 127.0.0.1 -p "$1" -t "$SECS" -f g 2>&1) || {
        printf 'iperf3 through port %s failed:\n%s\n' "$1" "$out" >&2
        echo "nan"
        return
    }
    awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Gbits/sec") v = $(i - 1) }
        END { print (v == "" ? "nan" : v) }' <<<"$out"
}

# "req/s p50 p99" of wrk with CONNS connections through PORT.
http() {
    local port=$1 conns=$2 secs=${3:-$SECS} out
    out=$(timeout $((secs + 15)) wrk -t2 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/" 2>&1) || {
        printf 'wrk through port %s failed:\n%s\n' "$port" "$out" >&2
        echo "nan - - 0"
        return
    }
    if grep -qE 'Socket errors|Non-2xx' <<<"$out"; then
        printf 'wrk through port %s saw errors:\n%s\n' "$port" "$out" >&2
    fi
    awk '/^Requests\/sec:/ { r = $2 } $1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 }
        / requests in / { n = $1 }
        END { printf "%s %s %s %d\n", (r == "" ? "nan" : r), p50, p99, n }' <<<"$out"
}

# The line with the median first field of the lines in $1 (the lower middle one of an even
# count); "nan" lines sort last.
median() {
    { grep -v -e '^$' -e '^nan' <<<"$1" | sort -g -k1,1 || true; grep '^nan' <<<"$1" || true; } |
        awk '{ l[NR] = $0 } END { print (NR ? l[int((NR + 1) / 2)] : "nan - -") }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "nan"; else printf "%.2f", a / b }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "nan" && b != "nan" && a + 0 >= b + 0) }'; }
gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "nan" && (b == "nan" || a + 0 > b + 0)) }'; }

report_rates() {
    local d_bulk d16 d64 g gtk r16 a16 b16 n16 t16 r64 a64 b64 n64 t64
    d_bulk=$(cut -d' ' -f1 <<<"${gbit[direct]:-nan}")
    d16=$(cut -d' ' -f1 <<<"${c16[direct]:-nan}")
    d64=$(cut -d' ' -f1 <<<"${c64[direct]:-nan}")
    echo
    printf '%-14s | %13s | %8s | %26s | %8s | %26s | %8s\n' path "iperf3 Gbit/s" "x direct" \
        "wrk c16 req/s (p50/p99)" "x direct" "wrk c64 req/s (p50/p99)" "x direct"
    printf -- '---------------|---------------|----------|----------------------------|----------|----------------------------|---------\n'
    for p in $PATHS; do
        read -r g _ <<<"${gbit[$p]}"
        read -r r16 a16 b16 _ <<<"${c16[$p]}"
        read -r r64 a64 b64 _ <<<"${c64[$p]}"
        printf '%-14s | %13s | %8s | %26s | %8s | %26s | %8s\n' "$p" "$g" "$(ratio "$g" "$d_bulk")" \
            "$(printf '%.0f (%s/%s)' "$r16" "$a16" "$b16" 2>/dev/null || echo nan)" "$(ratio "$r16" "$d16")" \
            "$(printf '%.0f (%s/%s)' "$r64" "$a64" "$b64" 2>/dev/null || echo nan)" "$(ratio "$r64" "$d64")"
    done
    echo
    # The proxy's own CPU time (user + system, softirq work done in its context included) per
    # unit of work: much less disturbed by other load on the machine than the rates above.
    local hz
    hz=$(getconf CLK_TCK)
    printf '%-14s | %18s | %18s | %18s\n' "proxy CPU" "ms per GB (iperf3)" "us per req (c16)" "us per req (c64)"
    printf -- '---------------|--------------------|--------------------|-------------------\n'
    for p in $PATHS; do
        [[ $p == direct && -z $forwarder ]] && continue
        read -r g gtk <<<"${gbit[$p]}"
        read -r _ _ _ n16 t16 <<<"${c16[$p]}"
        read -r _ _ _ n64 t64 <<<"${c64[$p]}"
        awk -v p="$p" -v hz="$hz" -v secs="$SECS" -v g="$g" -v gt="$gtk" -v n16="$n16" -v t16="$t16" \
            -v n64="$n64" -v t64="$t64" 'function per(t, n, k) { return (n > 0 && t != "") ? sprintf("%.1f", t / hz * k / n) : "nan" }
            BEGIN { gb = (g == "nan") ? 0 : g * secs / 8
                if (p == "direct") p = "Podman fwd"
                printf "%-14s | %18s | %18s | %18s\n", p, per(gt, gb, 1000), per(t16, n16, 1e6), per(t64, n64, 1e6) }'
    done
    echo

    [[ " $PATHS " == *" berth "* && " $PATHS " == *" direct "* ]] || return 0
    local misses=()
    local b_bulk b16 b64
    b_bulk=$(cut -d' ' -f1 <<<"${gbit[berth]}")
    b16=$(cut -d' ' -f1 <<<"${c16[berth]}")
    b64=$(cut -d' ' -f1 <<<"${c64[berth]}")
    ge "$(ratio "$b_bulk" "$d_bulk")" $GOAL_BULK || misses+=("throughput $(ratio "$b_bulk" "$d_bulk")x < ${GOAL_BULK}x")
    ge "$(ratio "$b16" "$d16")" $GOAL_RPS || misses+=("c16 req/s $(ratio "$b16" "$d16")x < ${GOAL_RPS}x")
    ge "$(ratio "$b64" "$d64")" $GOAL_RPS || misses+=("c64 req/s $(ratio "$b64" "$d64")x < ${GOAL_RPS}x")
    for p in $PATHS; do
        [[ $p == direct || $p == berth ]] && continue
        gt "$b_bulk" "$(cut -d' ' -f1 <<<"${gbit[$p]}")" || misses+=("$p ahead on throughput")
        gt "$b16" "$(cut -d' ' -f1 <<<"${c16[$p]}")" || misses+=("$p ahead at c16")
        gt "$b64" "$(cut -d' ' -f1 <<<"${c64[$p]}")" || misses+=("$p ahead at c64")
    done
    if [[ ${#misses[@]} -eq 0 ]]; then
        echo "goals: met (>= ${GOAL_BULK}x direct throughput, >= ${GOAL_RPS}x direct req/s, ahead of every peer)"
    else
        echo "goals: NOT met: $(
            IFS=';'
            echo "${misses[*]}"
        )"
    fi
}

inner() {
    bench_daemon_init "$1"
    trap inner_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local p
    for p in $PATHS; do
        case $p in
        direct | berth | socket-proxyd | socat | haproxy) ;;
        *) die "unknown path $p (known: direct berth socket-proxyd socat haproxy)" ;;
        esac
        [[ $p == direct ]] && continue
        if ! port_free "${http_port[$p]}" || ! port_free "${bulk_port[$p]}"; then
            die "port ${http_port[$p]} or ${bulk_port[$p]} is in use (set BERTH_BENCH_PORT)"
        fi
    done
    if ! port_free "$COLD_PORT" || ! port_free "$COLD_DIRECT_PORT"; then
        die "port $COLD_PORT or $COLD_DIRECT_PORT is in use (set BERTH_BENCH_PORT)"
    fi
    podman image exists "$WEB_IMAGE" || die "image $WEB_IMAGE is missing (run this script as root to build it)"
    podman image exists "$COLD_IMAGE" || die "image $COLD_IMAGE is missing (scripts/test-env builds it)"

    web_catalog >"$bench_work/etc/catalog.d/bench-web.toml"
    cold_catalog >"$bench_work/etc/catalog.d/bench-cold.toml"
    # shellcheck disable=SC2119 # no extra environment for the daemon here
    bench_daemon_start
    b enable bench-web --no-pull >/dev/null || die "berth enable bench-web failed: $(b status bench-web)"
    local deadline=$((SECONDS + 60))
    until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:${http_port[berth]}/" 2>/dev/null; do
        ((SECONDS < deadline)) || die "no page through berth within 60 s: $(b status bench-web)"
        sleep 0.2
    done
    http_port[direct]=$(published 8080)
    bulk_port[direct]=$(published 5201)
    [[ -n ${http_port[direct]} && -n ${bulk_port[direct]} ]] ||
        die "cannot find the container's published ports: $(podman port berth-bench-web)"
    forwarder=$(find_forwarder)
    log "container berth-bench-web: published 8080 -> ${http_port[direct]}, 5201 -> ${bulk_port[direct]}; forwarder pid ${forwarder:-none (pasta?)}"
    for p in $PATHS; do
        case $p in
        socket-proxyd) start_socket_proxyd ;;
        socat) start_socat ;;
        haproxy) start_haproxy ;;
        esac
    done

    # Each measurement runs for every path back to back, so that the paths of one column see
    # the same machine; with several rounds the order rotates and medians are reported.
    declare -A gbit c16 c64
    local -a order
    read -r -a order <<<"$PATHS"
    local round n=${#order[@]} k load
    read -r load _ </proc/loadavg
    log "load average before measuring: $load (other work on the machine skews every number)"
    for round in $(seq 1 "$ROUNDS"); do
        local -a turn=()
        for k in $(seq 0 $((n - 1))); do
            turn+=("${order[$(((k + round - 1) % n))]}")
        done
        # Next to each result: the CPU time the path's proxy used for it.
        local t0 v
        for p in "${turn[@]}"; do
            log "round $round, $p: iperf3 ${SECS}s"
            t0=$(ticks "$p" bulk)
            v=$(bulk "${bulk_port[$p]}")
            gbit[$p]+="$v $(($(ticks "$p" bulk) - t0))"$'\n'
        done
        for p in "${turn[@]}"; do
            # Warms up the connections and caches on this path; not counted.
            http "${http_port[$p]}" 16 1 >/dev/null
            log "round $round, $p: wrk -c16 ${SECS}s"
            t0=$(ticks "$p" http)
            v=$(http "${http_port[$p]}" 16)
            c16[$p]+="$v $(($(ticks "$p" http) - t0))"$'\n'
        done
        for p in "${turn[@]}"; do
            log "round $round, $p: wrk -c64 ${SECS}s"
            t0=$(ticks "$p" http)
            v=$(http "${http_port[$p]}" 64)
            c64[$p]+="$v $(($(ticks "$p" http) - t0))"$'\n'
        done
    done
    for p in $PATHS; do
        gbit[$p]=$(median "${gbit[$p]}")
        c16[$p]=$(median "${c16[$p]}")
        c64[$p]=$(median "${c64[$p]}")
    done
    read -r load _ </proc/loadavg
    log "load average after measuring: $load"

    # Cold starts: alternate the two so both see the same machine.
    local cold_b="" cold_d="" i
    if ((COLD_RUNS > 0)); then
        b enable bench-cold --no-pull >/dev/null || die "berth enable bench-cold failed: $(b status bench-cold)"
        cold_direct_once >/dev/null # the image's first start warms caches; not counted
        for ((i = 1; i <= COLD_RUNS; i++)); do
            log "cold start $i of $COLD_RUNS"
            cold_d+="$(cold_direct_once)"$'\n'
            cold_b+="$(cold_berth_once)"$'\n'
        done
    fi

    echo
    echo "berth proxy benchmark: berth ${BERTH_BENCH_REV:-?}; kernel $(uname -r); $(nproc) CPUs;" \
        "Podman $(podman version -f '{{.Client.Version}}' 2>/dev/null || echo '?')"
    [[ -z $PATHS ]] || report_rates
    report_cold "$cold_b" "$cold_d"
    [[ $STORM != 1 ]] || storm_compare
}

report_cold() {
    local berth_ms direct_ms
    [[ -n $1 ]] || return 0
    berth_ms=$(median_of <<<"$1")
    direct_ms=$(median_of <<<"$2")
    echo
    printf '%-44s | %s\n' "cold start (median of $COLD_RUNS)" "ms"
    printf -- '---------------------------------------------|------\n'
    printf '%-44s | %s   (runs: %s)\n' "podman run to first answer (container's own)" "$direct_ms" "$(tr '\n' ' ' <<<"$2")"
    printf '%-44s | %s   (runs: %s)\n' "berth on-demand, first byte" "$berth_ms" "$(tr '\n' ' ' <<<"$1")"
    if ((berth_ms <= direct_ms + GOAL_COLD_MS)); then
        echo "cold goal: met (+$((berth_ms - direct_ms)) ms <= +$GOAL_COLD_MS ms)"
    else
        echo "cold goal: NOT met (+$((berth_ms - direct_ms)) ms > +$GOAL_COLD_MS ms)"
    fi
}

if [[ "${1:-}" == --inner ]]; then
    # shellcheck source=bench/lib.sh
    . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
    inner "${2:?--inner BERTH_BINARY}"
    exit 0
fi

# ===========================================================================
# Set-up: tools, environment, images, build, and the hand-over to the user.
# ===========================================================================

install_tools() {
    local -a pkgs
    mapfile -t pkgs < <(missing_packages)
    [[ ${#pkgs[@]} -eq 0 || -z ${pkgs[0]} ]] && return 0
    berth_env_is_root ||
        die "missing tools; install them with: sudo apt-get install ${pkgs[*]/nginx/nginx-light}"
    log "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    local -a light=("${pkgs[@]/nginx/nginx-light}")
    # nginx-light is gone from newer Debian releases, where plain nginx is as small.
    apt-get install -y -qq "${light[@]}" >/dev/null ||
        apt-get install -y -qq "${pkgs[@]}" >/dev/null
    mapfile -t pkgs < <(missing_packages)
    [[ ${#pkgs[@]} -eq 0 || -z ${pkgs[0]} ]] || die "still missing after apt-get: ${pkgs[*]}"
}

# The nginx configuration baked into the bench image.
nginx_conf() {
    local temps="" m
    for m in fastcgi scgi uwsgi; do
        nginx -V 2>&1 | grep -q -- "--without-http_${m}_module" ||
            temps+="    ${m}_temp_path /tmp/$m;"$'\n'
    done
    cat <<CONF
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    access_log off;
    default_type text/html;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
$temps    server {
        listen 8080 backlog=1024;
        root /www;
    }
}
CONF
}

# localhost/berth-bench-web:1 for USER: the host's own nginx and iperf3 with the
# libraries they load, and static busybox for the shell. Rebuilt when any of
# them changes; nothing is pulled.
build_web_image() (
    local user=$1 bb nginx iperf label tmp root f
    nginx=$(command -v nginx) iperf=$(command -v iperf3)
    bb=$(_berth_env_find_busybox) || die "no busybox binary: install busybox-static"
    label=$({
        echo "recipe=1"
        sha256sum "$nginx" "$iperf" "$bb"
        nginx_conf
    } | sha256sum | cut -c1-32)
    if [[ "$(berth_env_as_user "$user" podman image inspect \
        --format '{{index .Config.Labels "io.berth.content"}}' "$WEB_IMAGE" 2>/dev/null)" == "$label" ]]; then
        log "image $WEB_IMAGE is up to date"
        return 0
    fi
    log "building $WEB_IMAGE from the host's nginx and iperf3"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    root=$tmp/rootfs
    mkdir -p "$root/bin" "$root/usr/sbin" "$root/usr/bin" "$root/etc/bench" "$root/www" \
        "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
    chmod 1777 "$root/tmp"
    cp "$bb" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    cp "$nginx" "$root/usr/sbin/nginx"
    cp "$iperf" "$root/usr/bin/iperf3"
    # Every library either binary loads, at the same path, and the loader.
    for f in $(ldd "$nginx" "$iperf" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(/ { print $1 }' | sort -u); do
        mkdir -p "$root$(dirname "$f")"
        cp -L "$f" "$root$f"
    done
    nginx_conf >"$root/etc/bench/nginx.conf"
    head -c 600 /dev/zero | tr '\0' 'x' | sed 's/^/<!doctype html><title>berth bench<\/title><p>/' >"$root/www/index.html"
    printf 'root:x:0:0:root:/root:/bin/sh\nbench:x:1000:1000:bench:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nbench:x:1000:\nnogroup:x:65534:\n' >"$root/etc/group"
    chmod -R a+rX "$root"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$tmp/rootfs.tar" .
    chmod 0755 "$tmp"
    chmod 0644 "$tmp/rootfs.tar"
    berth_env_as_user "$user" podman import --quiet --change "LABEL io.berth.content=$label" \
        --change 'CMD ["/bin/sh"]' "$tmp/rootfs.tar" "$WEB_IMAGE" >/dev/null ||
        die "podman import of $WEB_IMAGE failed for $user"
)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $(uname -s) == Linux ]] || die "this needs Linux"
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
# shellcheck source=scripts/lib/env.sh
. "$repo/scripts/lib/env.sh"
install_tools
bench_prepare "$repo"
build_web_image "$bench_user"
bench_run_as_user "$repo" "$repo/bench/proxy.sh" BERTH_BENCH_SECS BERTH_BENCH_PORT \
    BERTH_BENCH_PATHS BERTH_BENCH_ROUNDS BERTH_BENCH_COLD_RUNS BERTH_BENCH_STORM
