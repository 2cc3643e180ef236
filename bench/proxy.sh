#!/usr/bin/env bash
# Measures berth's port forwarding (the data path of the proxy) against going
# direct and against the usual peers, side by side in one run on loopback:
#
#   direct                  the client talks to the backend itself
#   berth forward           the daemon's forwarding code on one port (splice)
#   systemd-socket-proxyd   systemd's socket-activated proxy
#   socat                   one forked process per connection
#   haproxy                 mode tcp, option splice-auto, one thread (its best
#                           setting here: wrk and nginx need the other core)
#
#   bulk:  iperf3 -t 5, one stream, Gbit/s
#   HTTP:  wrk -t2 -c16 and -c64, 5 s, keep-alive, against nginx serving a
#          small static page; req/s with p50/p99 latency
#
#   goals: berth >= 0.85x direct throughput, >= 0.8x direct req/s at both
#          concurrencies, and ahead of every peer in the same run.
#
#   A second table gives each proxy's own CPU time per GB and per request:
#   far less disturbed by other work on the machine than the rates.
#
#     bench/proxy.sh
#
# As root, missing tools are installed with apt-get (nginx-light or nginx,
# iperf3, wrk, socat, haproxy; on a machine whose systemd is PID 1 the nginx
# package also starts its own nginx.service, which this script does not use).
# As another user the script says what to install and stops. berth is built
# with `cargo build --release` (honours CARGO_TARGET_DIR).
#
# Everything listens on 127.0.0.1 only, ports BERTH_BENCH_PORT (default 18600)
# to +50. nginx and haproxy get their own configuration in a temporary
# directory. Every process started here is stopped by its PID (its process
# group, for socat's per-connection children) on exit, also on failure or
# Ctrl-C. Each client run is bounded by `timeout`; the whole measurement takes
# about 90 s, the build comes on top.
#
# Each measurement runs for all paths back to back (bulk for every path, then
# c16 for every path, then c64), so that one column compares paths under the
# same conditions. On a shared or noisy machine use more rounds: the order of
# the paths rotates per round and the table shows medians.
#
# Knobs: BERTH_BENCH_ROUNDS (default 1; each adds about 90 s), BERTH_BENCH_SECS
# (seconds per iperf3 and wrk run, default 5), BERTH_BENCH_PORT (first port,
# default 18600), BERTH_BENCH_PATHS (which paths, default "direct berth
# socket-proxyd socat haproxy").
set -euo pipefail

readonly SECS=${BERTH_BENCH_SECS:-5}
readonly PORT=${BERTH_BENCH_PORT:-18600}
readonly PATHS=${BERTH_BENCH_PATHS:-direct berth socket-proxyd socat haproxy}
readonly ROUNDS=${BERTH_BENCH_ROUNDS:-1}
readonly GOAL_BULK=0.85
readonly GOAL_RPS=0.80
readonly PROXYD=/lib/systemd/systemd-socket-proxyd

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'bench/proxy.sh: error: %s\n' "$*" >&2
    exit 1
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------

missing_packages() {
    local -a pkgs=()
    command -v nginx >/dev/null || pkgs+=(nginx)
    command -v iperf3 >/dev/null || pkgs+=(iperf3)
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v socat >/dev/null || pkgs+=(socat)
    command -v haproxy >/dev/null || pkgs+=(haproxy)
    { [[ -x $PROXYD ]] && command -v systemd-socket-activate >/dev/null; } || pkgs+=(systemd)
    printf '%s\n' "${pkgs[@]}"
}

install_tools() {
    local -a pkgs
    mapfile -t pkgs < <(missing_packages)
    [[ ${#pkgs[@]} -eq 0 || -z ${pkgs[0]} ]] && return 0
    if [[ $(id -u) -ne 0 ]]; then
        die "missing tools; install them with: sudo apt-get install ${pkgs[*]/nginx/nginx-light}"
    fi
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

# ---------------------------------------------------------------------------
# Processes: every one started here is recorded and stopped by PID on exit
# ---------------------------------------------------------------------------

pids=()
tmp=
# The process group serving each path's HTTP and bulk port ("berth-http" -> PID).
declare -A group

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        # Each was started as its own process group leader (setsid): the group
        # holds socat's per-connection children and nginx's worker.
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
    [[ -n $tmp ]] && rm -rf "$tmp"
    exit "$rc"
}

# start NAME COMMAND...: runs COMMAND in the background in its own process
# group (PGID = PID), output to $tmp/NAME.log.
start() {
    local name=$1
    shift
    setsid "$@" >"$tmp/$name.log" 2>&1 &
    pids+=("$!")
    group[$name]=$!
}

# CPU time in clock ticks used so far by the process group serving PATH's KIND
# port (exited children included, as socat reaps its own).
ticks() {
    local pgid=${group[$1-$2]:-${group[$1]:-}} pid t=0
    [[ -n $pgid ]] || {
        echo 0
        return
    }
    for pid in $(pgrep -g "$pgid"); do
        t=$((t + $(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}

wait_port() {
    local port=$1 name=$2
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    die "$name did not listen on 127.0.0.1:$port; its log:$(printf '\n')$(cat "$tmp/$name.log" 2>/dev/null)"
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# ---------------------------------------------------------------------------
# Backends and paths
# ---------------------------------------------------------------------------

# Ports: HTTP on even offsets, iperf3 on the odd one next to it.
declare -A http_port=([direct]=$((PORT + 0)) [berth]=$((PORT + 10)) [socket-proxyd]=$((PORT + 20))
    [socat]=$((PORT + 30)) [haproxy]=$((PORT + 40)))
declare -A bulk_port=([direct]=$((PORT + 1)) [berth]=$((PORT + 11)) [socket-proxyd]=$((PORT + 21))
    [socat]=$((PORT + 31)) [haproxy]=$((PORT + 41)))

start_nginx() {
    local dir=$tmp/nginx temps="" m
    mkdir -p "$dir/html"
    # Workers run as nobody when started by root: the page must be readable.
    chmod 755 "$tmp" "$dir" "$dir/html"
    head -c 600 /dev/zero | tr '\0' 'x' | sed 's/^/<!doctype html><title>berth bench<\/title><p>/' >"$dir/html/index.html"
    chmod 644 "$dir/html/index.html"
    for m in fastcgi scgi uwsgi; do
        nginx -V 2>&1 | grep -q -- "--without-http_${m}_module" ||
            temps+="    ${m}_temp_path $dir/$m;"$'\n'
    done
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    default_type text/html;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
$temps    server {
        listen 127.0.0.1:${http_port[direct]} backlog=1024;
        root $dir/html;
    }
}
EOF
    start nginx nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;'
    wait_port "${http_port[direct]}" nginx
}

start_iperf() {
    start iperf3 iperf3 -s -B 127.0.0.1 -p "${bulk_port[direct]}"
    wait_port "${bulk_port[direct]}" iperf3
}

# start_pair NAME PATH COMMAND...: runs COMMAND twice, once per backend, with
# @LISTEN@ and @TO@ in its words replaced by that path's listening port and the
# backend's port.
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

start_berth() {
    start_pair berth berth "$berth" forward --listen 127.0.0.1:@LISTEN@ --to 127.0.0.1:@TO@
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
    cat >"$tmp/haproxy.cfg" <<EOF
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
EOF
    start haproxy haproxy -db -f "$tmp/haproxy.cfg"
    wait_port "${http_port[haproxy]}" haproxy
    wait_port "${bulk_port[haproxy]}" haproxy
}

# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------

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

main() {
    [[ $(uname -s) == Linux ]] || die "this needs Linux (splice)"
    install_tools
    local p
    for p in $PATHS; do
        [[ -n ${http_port[$p]:-} ]] || die "unknown path $p (known: ${!http_port[*]})"
        if ! port_free "${http_port[$p]}" || ! port_free "${bulk_port[$p]}"; then
            die "port ${http_port[$p]} or ${bulk_port[$p]} is in use (set BERTH_BENCH_PORT)"
        fi
    done

    log "building berth (cargo build --release)"
    (cd "$repo" && cargo build --release --quiet --bin berth)
    berth=${CARGO_TARGET_DIR:-target}/release/berth
    [[ $berth == /* ]] || berth=$repo/$berth
    [[ -x $berth ]] || die "no berth binary at $berth"

    tmp=$(mktemp -d -t berth-proxy-bench.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    log "starting nginx and iperf3 -s on 127.0.0.1"
    start_nginx
    start_iperf
    for p in $PATHS; do
        case $p in
        direct) ;;
        berth) start_berth ;;
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
    local round n=${#order[@]} k
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
        [[ $p == direct ]] && continue
        read -r g gtk <<<"${gbit[$p]}"
        read -r _ _ _ n16 t16 <<<"${c16[$p]}"
        read -r _ _ _ n64 t64 <<<"${c64[$p]}"
        awk -v p="$p" -v hz="$hz" -v secs="$SECS" -v g="$g" -v gt="$gtk" -v n16="$n16" -v t16="$t16" \
            -v n64="$n64" -v t64="$t64" 'function per(t, n, k) { return (n > 0 && t != "") ? sprintf("%.1f", t / hz * k / n) : "nan" }
            BEGIN { gb = (g == "nan") ? 0 : g * secs / 8
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

main "$@"
