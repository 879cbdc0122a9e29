#!/usr/bin/env bash
# Proxy benchmark: the same upstream reached directly, through `weft proxy`, Envoy,
# HAProxy and nginx, side by side on loopback, in interleaved rounds (medians reported).
#
# usage: scripts/bench-proxy.sh [options]
#   --rounds N        interleaved rounds; medians across rounds are reported (default 3)
#   --duration S      seconds per measurement run (default 10)
#   --targets LIST    comma list of direct,weft,envoy,haproxy,nginx (default: all)
#   --protos LIST     comma list of h1,h2c (default: both)
#   --workers N       proxy workers/threads: weft --workers, envoy --concurrency,
#                     haproxy nbthread, nginx worker_processes (default 1)
#   --body-size N     upstream response body bytes (default 16)
#   --quick           smoke run: 1 round of 3 s runs (unless --rounds/--duration are given)
#   --spin            during latency runs keep the proxy CPU busy with a SCHED_IDLE spinner, so that
#                     an idle vCPU's wake-up time (large in VMs) is not counted in every hop
#   --no-build        use the existing target/release/weft instead of running cargo build
#   --keep            keep the work dir (configs and logs) under /tmp
#   -h, --help        this text
#
# Per target and protocol:
#   max throughput  h1: wrk -t1 -c32 -dS (keep-alive); h2c: h2load -c32 -m10 -t1 -D S
#   latency         weft load --rate 1000 -c 10 --threads 1 -d S (h2c: --http2), open loop on a
#                   fixed schedule, latency from each request's intended send time (corrected for
#                   coordinated omission); p50/p99/p99.9; "added" = target minus direct, per
#                   round, then the median
#   CPU             proxy utime+stime (/proc/PID/stat, whole process tree) during the max run,
#                   in CPU-seconds per 10k requests
#   RSS             proxy VmRSS (process tree) idle after start, and VmHWM (peak) after load
# Pinning like a sidecar: upstream and proxy on CPU 1, the load tool on CPU 0.
#
# Environment:
#   BENCH_UPSTREAM_CMD   stand-in upstream instead of `weft app`: either the word `nginx`
#                        (a built-in nginx that answers 200 on an h1 port and an h2c port) or
#                        a shell command with {port}, {h2port} and {body_size} placeholders
#                        (without {h2port} the h2c upstream is {port} too).
#   WEFT_BIN             weft binary to use, also for `weft load` (default target/release/weft,
#                        built here).
#   BENCH_PROXY_CPU / BENCH_LOAD_CPU   CPUs for proxy+upstream / load tool (default 1 / 0).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$WEFT_ROOT"

# ------------------------------------------------------------------------------ options
ROUNDS="" DURATION="" TARGETS="direct,weft,envoy,haproxy,nginx" PROTOS="h1,h2c"
WORKERS=1 BODY_SIZE=16 QUICK=0 BUILD=1 KEEP=0 SPIN=0
while (($#)); do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        --protos) PROTOS=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --body-size) BODY_SIZE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --spin) SPIN=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if ((QUICK)); then
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-3}
fi
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10}
WARMUP=1
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive integer (seconds)"
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer"
[[ $BODY_SIZE =~ ^[0-9]+$ ]] || die "--body-size must be an integer"
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
IFS=, read -r -a PROTO_LIST <<<"$PROTOS"
for t in "${TARGET_LIST[@]}"; do
    [[ $t =~ ^(direct|weft|envoy|haproxy|nginx)$ ]] || die "unknown target '$t'"
done
for p in "${PROTO_LIST[@]}"; do
    [[ $p =~ ^(h1|h2c)$ ]] || die "unknown protocol '$p'"
done

PROXY_CPU=${BENCH_PROXY_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-0}
if (($(nproc) < 2)); then
    log "WARNING: fewer than 2 CPUs: proxy and load tool share CPU 0"
    PROXY_CPU=0 LOAD_CPU=0
fi
AUTHORITY=upstream                # Host / :authority the clients send (the weft Service name)
MAX_CONNS=32 H2_STREAMS=10        # max-throughput runs
LAT_CONNS=10 LAT_RATE=1000        # latency runs (weft load): LAT_CONNS connections, LAT_RATE req/s
CLK_TCK=$(getconf CLK_TCK)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ------------------------------------------------------------------------------ setup
log "setup (--bench)"
"$WEFT_ROOT/scripts/setup.sh" --bench
ENVOY=$(envoy_bin)
for tool in wrk h2load haproxy nginx taskset curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found after setup"
done

# weft is always needed: `weft load` drives the latency runs.
WEFT=${WEFT_BIN:-$WEFT_ROOT/target/release/weft}
if ((BUILD)) && [[ -z "${WEFT_BIN:-}" ]]; then
    log "cargo build --release -p weft"
    s=$(date +%s.%N)
    cargo build --release -p weft
    log "built in $(elapsed_since "$s")"
fi
[[ -x "$WEFT" ]] || die "weft binary $WEFT not found (build it, or set WEFT_BIN)"

WORK=$(mktemp -d /tmp/weft-bench.XXXXXX)
RESULTS=$WORK/results.tsv
NOTES=$WORK/notes.txt
: >"$RESULTS"
: >"$NOTES"

# ------------------------------------------------------------------------------ processes
# shellcheck source=scripts/bench-lib.sh
BG_CPU=$PROXY_CPU
source "$WEFT_ROOT/scripts/bench-lib.sh"

curl_proto_args() { # PROTO: curl args for a request in that protocol
    if [[ $1 == h2c ]]; then
        printf '%s\n' --http2-prior-knowledge
    else
        printf '%s\n' --http1.1
    fi
}

# ------------------------------------------------------------------------------ measurements
cpu_ticks() { # PID: utime+stime of the process tree, in clock ticks
    local p sum=0 v
    for p in $(tree "$1"); do
        v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || v=0
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

status_kib() { # PID FIELD: sum of a /proc/PID/status field (kB) over the process tree
    local p sum=0 v
    for p in $(tree "$1"); do
        v=$(awk -v f="$2:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null) || v=0
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

record() { # ROUND TARGET PROTO METRIC VALUE (an empty value is not recorded)
    [[ -n "$5" ]] || return 0
    printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
}

kv() { # KEY LINE: value of KEY=value in LINE
    printf '%s\n' "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'
}

write_lua() {
    local done_fn
    done_fn=$(
        cat <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%.1f p99_us=%.1f p999_us=%.1f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
LUA
    )
    printf '%s\n' "$done_fn" >"$WORK/max.lua"
}

LAST_BENCH=""
run_wrk() { # PORT CONNS SECONDS SCRIPT [extra wrk args]: sets LAST_BENCH to the BENCH line
    local port=$1 conns=$2 secs=$3 script=$4 out
    shift 4
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${secs}s" --timeout 5s \
        -H "Host: $AUTHORITY" -s "$script" "$@" "http://127.0.0.1:$port/" 2>&1) || {
        log "wrk failed: $out"
        return 1
    }
    LAST_BENCH=$(printf '%s\n' "$out" | grep '^BENCH ' | tail -1)
    [[ -n "$LAST_BENCH" ]] || { log "wrk printed no result: $out"; return 1; }
}

LAST_H2=""
run_h2load() { # PORT SECONDS: sets LAST_H2 to "requests=<2xx> rps=<req/s> bad=<3xx-5xx> failed=<n>"
    local port=$1 secs=$2 out fin ok2 bad failed
    out=$(taskset -c "$LOAD_CPU" h2load -c"$MAX_CONNS" -m"$H2_STREAMS" -t1 -D "$secs" \
        -H ":authority: $AUTHORITY" "http://127.0.0.1:$port/" 2>&1) || {
        log "h2load failed: $(printf '%s\n' "$out" | tail -5)"
        return 1
    }
    # finished in 3.00s, 51234.00 req/s, 4.12MB/s
    # requests: 153702 total, 153734 started, 153702 done, 153702 succeeded, 0 failed, 0 errored, 0 timeout
    # status codes: 153702 2xx, 0 3xx, 0 4xx, 0 5xx
    fin=$(printf '%s\n' "$out" | awk '/^finished in/ {gsub(",", ""); print $4}')
    failed=$(printf '%s\n' "$out" | awk '/^requests:/ {print $10}')
    ok2=$(printf '%s\n' "$out" | awk '/^status codes:/ {print $3}')
    bad=$(printf '%s\n' "$out" | awk '/^status codes:/ {print $5 + $7 + $9}')
    [[ -n "$fin" && -n "$ok2" && -n "$failed" ]] || { log "h2load printed no result: $out"; return 1; }
    # With -D, the streams still in flight when time is up count as failed: up to -c x -m of
    # them are expected; more than that is a real failure.
    if ((failed <= MAX_CONNS * H2_STREAMS)); then failed=0; fi
    LAST_H2="requests=$ok2 rps=$fin bad=$bad failed=$failed"
}

LAST_LOAD=""
run_weft_load() { # PORT PROTO: latency run; sets LAST_LOAD to "rps=.. p50_us=.. p99_us=.. p999_us=.. errors=.. saturated=0|1"
    local port=$1 proto=$2 out=$WORK/load.json
    # -H Host: the authority (HTTP/1.1 Host, HTTP/2 :authority) the proxy routes by
    local -a args=(--rate "$LAT_RATE" -c "$LAT_CONNS" --threads 1 -d "${DURATION}s" --warmup "${WARMUP}s"
        -H "Host: $AUTHORITY" --json -q)
    [[ $proto == h2c ]] && args+=(--http2)
    taskset -c "$LOAD_CPU" "$WEFT" load "http://127.0.0.1:$port/" "${args[@]}" \
        >"$out" 2>"$WORK/load.err" || {
        log "weft load failed: $(tail -n 5 "$WORK/load.err")"
        return 1
    }
    LAST_LOAD=$(python3 - "$out" <<'PY'
import json, sys

d = json.load(open(sys.argv[1]))
lat = d["latency_ms"]
bad = sum(n for s, n in d["status_counts"].items() if not s.startswith("2"))
print(f'rps={d["achieved_rate"]:.0f} p50_us={lat["p50"] * 1000:.1f} p99_us={lat["p99"] * 1000:.1f} '
      f'p999_us={lat["p999"] * 1000:.1f} errors={d["errors"] + bad} '
      f'saturated={int(bool(d["client"]["saturated"]))}')
PY
    ) || { log "weft load printed no result: $(head -c 500 "$out")"; return 1; }
}

# ------------------------------------------------------------------------------ upstream
UP_H1="" UP_H2="" UPSTREAM_DESC=""
start_upstream() {
    local p1 p2 cmd logf=$WORK/upstream.log
    p1=$(free_port)
    p2=$p1
    if [[ "${BENCH_UPSTREAM_CMD:-}" == nginx ]]; then
        p2=$(free_port)
        local body
        body=$(head -c "$BODY_SIZE" /dev/zero | tr '\0' x)
        start_nginx_stand_in "$WORK/upstream-nginx" "$p1" "$p2" "$body" "$logf"
        UPSTREAM_DESC="stand-in nginx (return 200, ${BODY_SIZE} B body; h1 :$p1, h2c :$p2)"
    elif [[ -n "${BENCH_UPSTREAM_CMD:-}" ]]; then
        [[ "$BENCH_UPSTREAM_CMD" == *"{h2port}"* ]] && p2=$(free_port)
        cmd=${BENCH_UPSTREAM_CMD//\{port\}/$p1}
        cmd=${cmd//\{h2port\}/$p2}
        cmd=${cmd//\{body_size\}/$BODY_SIZE}
        start_bg "$logf" bash -c "$cmd"
        UPSTREAM_DESC="stand-in: $cmd"
    else
        start_bg "$logf" "$WEFT" app --listen "127.0.0.1:$p1" --body-size "$BODY_SIZE"
        UPSTREAM_DESC="weft app (${BODY_SIZE} B body, h1 + h2c on :$p1)"
    fi
    UPSTREAM_PID=$BG_PID
    UP_H1=127.0.0.1:$p1
    UP_H2=127.0.0.1:$p2
    wait_200 upstream "$UPSTREAM_PID" "$logf" "http://$UP_H1/" --http1.1 || die "upstream did not start"
    if [[ ",$PROTOS," == *,h2c,* ]]; then
        wait_200 "upstream h2c" "$UPSTREAM_PID" "$logf" "http://$UP_H2/" --http2-prior-knowledge ||
            die "upstream does not answer h2c on $UP_H2"
    fi
    log "upstream: $UPSTREAM_DESC, pid $UPSTREAM_PID on CPU $PROXY_CPU"
}

# ------------------------------------------------------------------------------ targets
# start_target TARGET PROTO: sets T_PID (empty for direct) and T_PORT; returns 1 if it
# cannot be started (the caller skips it and notes why).
T_PID="" T_PORT="" T_DIR=""
start_target() {
    local target=$1 proto=$2 up port admin logf
    T_PID="" T_DIR=$WORK/$target-$proto-r$ROUND
    mkdir -p "$T_DIR"
    logf=$T_DIR/log
    if [[ $proto == h2c ]]; then up=$UP_H2; else up=$UP_H1; fi
    local up_host=${up%:*} up_port=${up##*:}
    port=$(free_port)
    case "$target" in
    direct)
        T_PORT=$up_port
        return 0
        ;;
    weft)
        local inbound cfg=$T_DIR/config wproto=http
        [[ $proto == h2c ]] && wproto=http2
        mkdir -p "$cfg"
        cat >"$cfg/upstream.yaml" <<EOF
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: upstream}
spec:
  ports: [{port: 8080, protocol: $wproto}]
  endpoints: [{address: "$up"}]
EOF
        inbound=$(free_port)
        admin=$(free_port)
        start_bg "$logf" "$WEFT" proxy --config "$cfg" --service bench \
            --outbound "127.0.0.1:$port" --inbound "127.0.0.1:$inbound" \
            --admin "127.0.0.1:$admin" --workers "$WORKERS"
        T_PID=$BG_PID
        wait_200 weft "$T_PID" "$logf" "http://127.0.0.1:$admin/ready" || return 1
        ;;
    envoy)
        admin=$(free_port)
        local upstream_opts=""
        if [[ $proto == h2c ]]; then
            upstream_opts='
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}'
        fi
        {
            envoy_bootstrap_head "$admin" "$port"
            cat <<EOF
              routes: [{match: {prefix: "/"}, route: {cluster: upstream}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s$upstream_opts
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: $up_host, port_value: $up_port}}}
EOF
        } >"$T_DIR/envoy.yaml"
        start_bg "$logf" "$ENVOY" -c "$T_DIR/envoy.yaml" --concurrency "$WORKERS" \
            --disable-hot-restart -l warning
        T_PID=$BG_PID
        wait_200 envoy "$T_PID" "$logf" "http://127.0.0.1:$admin/ready" || return 1
        ;;
    haproxy)
        local bind_opts="" server_opts=""
        if [[ $proto == h2c ]]; then bind_opts=" proto h2" server_opts=" proto h2"; fi
        cat >"$T_DIR/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn 4096
    # no log lines configured: nothing is logged
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always
frontend bench
    bind 127.0.0.1:$port$bind_opts
    default_backend upstream
backend upstream
    server up $up$server_opts
EOF
        haproxy -c -q -f "$T_DIR/haproxy.cfg" >"$T_DIR/check.log" 2>&1 || {
            log "haproxy config invalid: $(cat "$T_DIR/check.log")"
            return 1
        }
        start_bg "$logf" haproxy -db -f "$T_DIR/haproxy.cfg"
        T_PID=$BG_PID
        ;;
    nginx)
        local listen_opts="" keepalive=64
        if [[ $proto == h2c ]]; then
            listen_opts=" http2"
            # every h2 stream needs its own upstream HTTP/1.1 connection: keep enough idle
            # ones for -c x -m streams, or nginx opens and closes connections per request
            keepalive=$((MAX_CONNS * H2_STREAMS + 64))
        fi
        up=$UP_H1   # nginx's proxy module speaks HTTP/1.x only to upstreams
        mkdir -p "$T_DIR/tmp"
        cat >"$T_DIR/nginx.conf" <<EOF
worker_processes $WORKERS;
daemon off;
pid $T_DIR/nginx.pid;
error_log $T_DIR/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $T_DIR/tmp/body;
    proxy_temp_path $T_DIR/tmp/proxy;
    fastcgi_temp_path $T_DIR/tmp/fastcgi;
    uwsgi_temp_path $T_DIR/tmp/uwsgi;
    scgi_temp_path $T_DIR/tmp/scgi;
    # the default (1000) would close every client connection after 1000 requests
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream up {
        server $up;
        keepalive $keepalive;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$port$listen_opts;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
        nginx -t -q -p "$T_DIR" -c "$T_DIR/nginx.conf" -e "$T_DIR/error.log" >"$T_DIR/check.log" 2>&1 || {
            log "nginx config invalid: $(cat "$T_DIR/check.log")"
            return 1
        }
        start_bg "$logf" nginx -p "$T_DIR" -c "$T_DIR/nginx.conf" -e "$T_DIR/error.log"
        T_PID=$BG_PID
        ;;
    esac
    T_PORT=$port
    # Every proxy must answer a real request through it in the benchmarked protocol.
    local args
    mapfile -t args < <(curl_proto_args "$proto")
    wait_200 "$target/$proto" "$T_PID" "$logf" "http://127.0.0.1:$T_PORT/" "${args[@]}" \
        -H "Host: $AUTHORITY" || return 1
}

note() { # TEXT: a line for the report (deduplicated)
    grep -qxF -- "- $*" "$NOTES" 2>/dev/null || printf -- '- %s\n' "$*" >>"$NOTES"
}

# measure TARGET PROTO: one round's measurements of one target in one protocol
measure() {
    local target=$1 proto=$2 tag="round $ROUND/$ROUNDS $1 $2"
    if ! start_target "$target" "$proto"; then
        note "$target $proto: could not be started in round $ROUND, skipped (logs in the kept work dir)"
        KEEP=1
        [[ -n "$T_PID" ]] && stop_pid "$T_PID"
        return 0
    fi
    local pid=$T_PID port=$T_PORT
    local rss_idle="" c0 c1 reqs rps line errs
    if [[ -n "$pid" ]]; then
        sleep 0.5
        rss_idle=$(status_kib "$pid" VmRSS)
    fi
    # warm-up (connections, pools, caches), not measured
    if [[ $proto == h1 ]]; then
        run_wrk "$port" "$MAX_CONNS" "$WARMUP" "$WORK/max.lua" >/dev/null || true
    else
        run_h2load "$port" "$WARMUP" >/dev/null || true
    fi
    # (a) max throughput, with (c) CPU ticks around it
    [[ -n "$pid" ]] && c0=$(cpu_ticks "$pid")
    if [[ $proto == h1 ]]; then
        if ! run_wrk "$port" "$MAX_CONNS" "$DURATION" "$WORK/max.lua"; then
            note "$target $proto: wrk failed in round $ROUND"
            [[ -n "$pid" ]] && stop_pid "$pid"
            return 0
        fi
        line=$LAST_BENCH
        reqs=$(kv requests "$line")
        rps=$(awk -v r="$reqs" -v d="$(kv duration_us "$line")" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
        errs=$(($(kv connect "$line") + $(kv read "$line") + $(kv write "$line") + $(kv status "$line") + $(kv timeout "$line")))
    else
        if ! run_h2load "$port" "$DURATION"; then
            note "$target $proto: h2load failed in round $ROUND"
            [[ -n "$pid" ]] && stop_pid "$pid"
            return 0
        fi
        line=$LAST_H2
        reqs=$(kv requests "$line")
        rps=$(awk -v r="$(kv rps "$line")" 'BEGIN { printf "%.0f", r }')
        errs=$(($(kv failed "$line") + $(kv bad "$line")))
    fi
    record "$ROUND" "$target" "$proto" rps "$rps"
    record "$ROUND" "$target" "$proto" errors "$errs"
    ((errs == 0)) || note "$target $proto: $errs errors/non-2xx responses in the max-throughput run of round $ROUND"
    local msg="$tag: $rps req/s"
    if [[ -n "$pid" ]]; then
        c1=$(cpu_ticks "$pid")
        local cpu10k rss_peak
        cpu10k=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.4f", (n > 0 ? t / hz / n * 10000 : 0) }')
        rss_peak=$(status_kib "$pid" VmHWM)
        record "$ROUND" "$target" "$proto" cpu_s_per_10k "$cpu10k"
        record "$ROUND" "$target" "$proto" rss_idle_mib "$(mib "$rss_idle")"
        record "$ROUND" "$target" "$proto" rss_load_mib "$(mib "$rss_peak")"
        msg+=", CPU $cpu10k s/10k req, RSS $(mib "$rss_idle") -> $(mib "$rss_peak") MiB"
    fi
    ((errs == 0)) || msg+=", $errs errors"
    # (b) latency at a fixed moderate rate, open loop
    local spinner=""
    if ((SPIN)); then
        start_bg /dev/null chrt --idle 0 bash -c 'while :; do :; done'
        spinner=$BG_PID
    fi
    if run_weft_load "$port" "$proto"; then
        line=$LAST_LOAD
        local lrps p50 p99 p999 lerrs
        lrps=$(kv rps "$line") lerrs=$(kv errors "$line")
        p50=$(kv p50_us "$line") p99=$(kv p99_us "$line") p999=$(kv p999_us "$line")
        record "$ROUND" "$target" "$proto" lat_rps "$lrps"
        record "$ROUND" "$target" "$proto" p50_us "$p50"
        record "$ROUND" "$target" "$proto" p99_us "$p99"
        record "$ROUND" "$target" "$proto" p999_us "$p999"
        ((lerrs == 0)) || note "$target $proto: $lerrs errors/non-2xx in the latency run of round $ROUND"
        (($(kv saturated "$line") == 0)) ||
            note "$target $proto: weft load reported itself saturated in the latency run of round $ROUND (report in the kept work dir)"
        msg+="; at $lrps req/s p50 ${p50}us p99 ${p99}us p99.9 ${p999}us"
    else
        note "$target $proto: latency run failed in round $ROUND"
        KEEP=1
    fi
    [[ -z "$spinner" ]] || stop_pid "$spinner"
    log "$msg"
    [[ -n "$pid" ]] && stop_pid "$pid"
    return 0
}

# ------------------------------------------------------------------------------ run
write_lua
TS=$(date +%Y%m%d-%H%M%S)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
awk '$1 > 0.5 { exit 1 }' /proc/loadavg ||
    log "WARNING: load average $LOAD_BEFORE: other work on this machine will skew the numbers"
start_upstream
[[ ",$PROTOS," == *,h2c,* && ",$TARGETS," == *,nginx,* ]] &&
    note "nginx h2c: h2c from the client, HTTP/1.1 keep-alive to the upstream with $((MAX_CONNS * H2_STREAMS + 64)) idle connections kept (nginx's proxy module has no HTTP/2 upstream)"
if ((SPIN)); then
    note "latency runs: CPU $PROXY_CPU kept busy by a SCHED_IDLE spinner (--spin)"
else
    note "latency runs: at ~$LAT_RATE req/s CPU $PROXY_CPU is mostly idle, so each hop includes an idle CPU's wake-up time (large in VMs; --spin removes it)"
fi
note "every run is preceded by a ${WARMUP} s warm-up that is not measured; RSS idle is read before it"

est=$((ROUNDS * ${#TARGET_LIST[@]} * ${#PROTO_LIST[@]} * (2 * DURATION + 2 * WARMUP + 2)))
log "$ROUNDS round(s) x targets [${TARGET_LIST[*]}] x protocols [${PROTO_LIST[*]}], ${DURATION} s runs: about $((est / 60)) min $((est % 60)) s"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for target in "${TARGET_LIST[@]}"; do
        for proto in "${PROTO_LIST[@]}"; do
            measure "$target" "$proto"
        done
    done
done

# ------------------------------------------------------------------------------ report
mkdir -p "$WEFT_ROOT/target/bench"
OUT=$WEFT_ROOT/target/bench/proxy-$TS.md
cp "$RESULTS" "$WEFT_ROOT/target/bench/proxy-$TS.tsv"
{
    echo "# weft proxy benchmark $TS"
    echo
    echo "- commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(uname -sr), $(nproc) CPUs: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "- upstream: $UPSTREAM_DESC"
    echo "- $ROUNDS round(s), interleaved; medians across rounds. ${DURATION} s per run. workers/threads per proxy: $WORKERS"
    echo "- pinning: upstream + proxy on CPU $PROXY_CPU, load tool on CPU $LOAD_CPU"
    echo "- max: wrk -t1 -c$MAX_CONNS (h1), h2load -t1 -c$MAX_CONNS -m$H2_STREAMS (h2c); latency: weft load --rate $LAT_RATE -c $LAT_CONNS --threads 1 (h2c: --http2), open loop, from the intended send time (${WARMUP} s warm-up)"
    echo "- CPU-s/10k: proxy process tree utime+stime during the max run; RSS: VmRSS idle, VmHWM (peak) after load, summed over the process tree"
    echo "- load average at start: $LOAD_BEFORE"
    printf -- '- versions: envoy %s; %s; %s; %s; %s\n' \
        "$("$ENVOY" --version 2>/dev/null | grep -oE '/[0-9]+\.[0-9]+\.[0-9]+/' | tr -d / | head -1)" \
        "$(haproxy -v 2>/dev/null | head -1 | awk '{print "haproxy " $3}')" \
        "$(nginx -v 2>&1 | awk -F/ '{print "nginx " $2}')" \
        "$(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}')" \
        "$(h2load --version 2>&1 | head -1)"
    echo
    python3 - "$RESULTS" <<'PY'
import collections, statistics, sys

rows = collections.defaultdict(lambda: collections.defaultdict(dict))  # (t,p) -> metric -> round -> v
order = []
for line in open(sys.argv[1]):
    rnd, t, p, m, v = line.rstrip("\n").split("\t")
    if not v:
        continue
    if (t, p) not in order:
        order.append((t, p))
    rows[(t, p)][m][int(rnd)] = float(v)

def med(t, p, m):
    vals = list(rows.get((t, p), {}).get(m, {}).values())
    return statistics.median(vals) if vals else None

def added(t, p):
    if t == "direct":
        return None
    mine, base = rows[(t, p)].get("p50_us", {}), rows.get(("direct", p), {}).get("p50_us", {})
    diffs = [mine[r] - base[r] for r in mine if r in base]
    return statistics.median(diffs) if diffs else None

def fmt(v, nd=0):
    if v is None:
        return "–"
    return f"{v:,.{nd}f}"

print("| target | proto | max rps | p50 µs | p99 µs | p99.9 µs | added p50 µs | CPU-s/10k req | RSS idle MiB | RSS load MiB |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for t, p in order:
    print(f"| {t} | {p} | {fmt(med(t, p, 'rps'))} | {fmt(med(t, p, 'p50_us'))} | {fmt(med(t, p, 'p99_us'))} "
          f"| {fmt(med(t, p, 'p999_us'))} | {fmt(added(t, p))} | {fmt(med(t, p, 'cpu_s_per_10k'), 3)} "
          f"| {fmt(med(t, p, 'rss_idle_mib'), 1)} | {fmt(med(t, p, 'rss_load_mib'), 1)} |")

def ratio(a, b):
    # only meaningful for two positive values (an "added" latency can come out negative in noise)
    return f"{a / b:.2f}" if a is not None and b is not None and a > 0 and b > 0 else "n/a"

lines = []
for peer in ("envoy", "haproxy"):
    for p in ("h1", "h2c"):
        if ("weft", p) not in rows or (peer, p) not in rows:
            continue
        lines.append(
            f"| weft/{peer} | {p} | {ratio(med('weft', p, 'rps'), med(peer, p, 'rps'))} "
            f"| {ratio(med('weft', p, 'cpu_s_per_10k'), med(peer, p, 'cpu_s_per_10k'))} "
            f"| {ratio(added('weft', p), added(peer, p))} |")
print()
if lines:
    print("| ratio | proto | throughput (higher is better) | CPU per request (lower is better) | added p50 (lower is better) |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(lines))
else:
    print("(no weft/envoy or weft/haproxy ratios: weft and a peer were not both measured)")
PY
    if [[ -s "$NOTES" ]]; then
        echo
        echo "Notes:"
        echo
        cat "$NOTES"
    fi
} >"$OUT"
echo
cat "$OUT"
echo
log "report written to ${OUT#"$WEFT_ROOT"/} (raw values: ${OUT%.md}.tsv)"
