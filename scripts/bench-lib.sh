# shellcheck shell=bash
# Process handling shared by the benchmark scripts (bench-proxy.sh, bench-load.sh): start
# background processes pinned to a CPU, wait for them to answer, stop them (and their
# children) on exit. Source it after setting WORK (the work dir) and KEEP (1 keeps WORK),
# and BG_CPU (the CPU start_bg pins to); it installs the EXIT/INT/TERM traps.
: "${WORK:?set WORK before sourcing bench-lib.sh}" "${KEEP:?set KEEP before sourcing bench-lib.sh}" "${BG_CPU:?}"

STARTED=()   # pids of every background process this script started

alive() { # PID: running and not a zombie
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

tree() { # PID: the pid and all its descendants
    local p=$1 c
    printf '%s\n' "$p"
    for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do
        tree "$c"
    done
}

stop_pid() { # PID: TERM its process tree, wait up to 5 s, then KILL what is left
    local pid=$1 i k
    [[ -n "$pid" ]] || return 0
    local -a kids=()
    mapfile -t kids < <(tree "$pid" | tail -n +2)
    kill -TERM "$pid" "${kids[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "pid $pid did not exit on TERM: KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    for k in "${kids[@]}"; do
        if alive "$k"; then kill -KILL "$k" 2>/dev/null || true; fi
    done
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${STARTED[@]}"; do
        [[ "$p" == "$pid" ]] || keep+=("$p")
    done
    STARTED=("${keep[@]+"${keep[@]}"}")
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        stop_pid "${STARTED[i]}"
    done
    if ((KEEP)) || ((rc != 0)); then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

BG_PID=""
start_bg() { # LOGFILE CMD...: start CMD pinned to CPU $BG_CPU; sets BG_PID
    local logf=$1
    shift
    taskset -c "$BG_CPU" "$@" >"$logf" 2>&1 </dev/null &
    BG_PID=$!
    STARTED+=("$BG_PID")
}

http_status() { # URL [curl args...]: prints the status code (000 on failure)
    local url=$1
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null || true
}

wait_200() { # NAME PID LOGFILE URL [curl args...]: wait up to 20 s for a 200
    local name=$1 pid=$2 logf=$3 url=$4 i code=000
    shift 4
    for ((i = 0; i < 200; i++)); do
        if ! alive "$pid"; then
            log "$name exited during start-up; last lines of $logf:"
            tail -n 20 "$logf" >&2 || true
            return 1
        fi
        code=$(http_status "$url" "$@")
        [[ "$code" == 200 ]] && return 0
        sleep 0.05
    done
    log "$name: no 200 from $url after 20 s (last status $code); last lines of $logf:"
    tail -n 20 "$logf" >&2 || true
    return 1
}

start_nginx_stand_in() { # DIR H1_PORT H2C_PORT BODY LOGFILE: nginx, 1 worker, `return 200 BODY`
    # on an HTTP/1.1 port and an h2c port, started with start_bg (sets BG_PID)
    local d=$1 p1=$2 p2=$3 body=$4 logf=$5
    mkdir -p "$d/tmp"
    cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$p1;
        listen 127.0.0.1:$p2 http2;
        location / { default_type text/plain; return 200 "$body"; }
    }
}
EOF
    nginx -t -q -p "$d" -c "$d/nginx.conf" -e "$d/error.log" || die "stand-in nginx config invalid ($d/nginx.conf)"
    start_bg "$logf" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"
}

envoy_bootstrap_head() { # ADMIN_PORT LISTEN_PORT: an Envoy bootstrap up to one virtual host's
    # `domains: ["*"]` (one HTTP listener, codec AUTO); the caller goes on with `routes:`
    envoy_bootstrap_listener "$1" "$2"
    cat <<EOF
            - name: all
              domains: ["*"]
EOF
}

envoy_bootstrap_listener() { # ADMIN_PORT LISTEN_PORT: an Envoy bootstrap up to the listener's
    # `virtual_hosts:` (one HTTP listener, codec AUTO); the caller goes on with the virtual hosts,
    # then `http_filters:` and `clusters:`
    cat <<EOF
node: {id: bench, cluster: bench}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $1}}
static_resources:
  listeners:
  - name: bench
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            name: bench
            virtual_hosts:
EOF
}

# ---- fixed-rate runs of one weft proxy (bench-flow.sh, bench-observe.sh); they need WEFT (the
# binary whose `weft load` drives the runs), free_port (lib.sh) and start_bg above.

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # PID: utime+stime in clock ticks
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

wait_ready() { # ADMIN_ADDR: wait up to 10 s for /ready to answer 200
    local i
    for ((i = 0; i < 100; i++)); do
        [[ $(http_status "http://$1/ready") == 200 ]] && return 0
        sleep 0.1
    done
    die "$1 never became ready"
}

fixed_rate_run() { # LABEL BIN CFG_DIR RATE SECS ROWS [PROXY_FLAGS...]: `BIN proxy --workers 1`
    # on CFG_DIR (Service `upstream`) driven by `weft load` on CPU 0 at RATE for SECS after a
    # 1 s warm-up; appends "LABEL p50 p99 p999 cpu_us_per_req errors" to ROWS
    local label=$1 bin=$2 cfg=$3 rate=$4 secs=$5 rows=$6 port admin p out c0 c1 n
    shift 6
    port=$(free_port) admin=$(free_port)
    start_bg "$WORK/proxy-$label.log" "$bin" proxy --config "$cfg" --service bench \
        --outbound "127.0.0.1:$port" --inbound "127.0.0.1:$(free_port)" \
        --admin "127.0.0.1:$admin" --workers 1 "$@"
    p=$BG_PID
    wait_ready "127.0.0.1:$admin"
    out=$(mktemp "$WORK/load-$label.XXXXXX")
    # warm-up, then the measured run (CPU counted around it only)
    taskset -c 0 "$WEFT" load -q --json --rate "$rate" -d 1s --warmup 0s -H 'Host: upstream' \
        "http://127.0.0.1:$port/" >/dev/null
    c0=$(cpu_ticks "$p")
    taskset -c 0 "$WEFT" load -q --json --rate "$rate" -d "${secs}s" --warmup 0s \
        -H 'Host: upstream' "http://127.0.0.1:$port/" >"$out"
    c1=$(cpu_ticks "$p")
    stop_pid "$p"
    n=$(json "$out" 'd["requests"]')
    printf '%s %s %s %s %s %s\n' "$label" \
        "$(json "$out" 'd["latency_ms"]["p50"]')" "$(json "$out" 'd["latency_ms"]["p99"]')" \
        "$(json "$out" 'd["latency_ms"]["p999"]')" \
        "$(awk -v c=$((c1 - c0)) -v n="$n" 'BEGIN {printf "%.2f", c * 10000 / n}')" \
        "$(json "$out" 'd["requests"] - d["status_counts"].get("200", 0)')" >>"$rows"
}

last_row() { # ROWS ROUND: the last row of ROWS as a markdown table row headed by ROUND
    local label p50 p99 p999 cpu errors
    read -r label p50 p99 p999 cpu errors < <(tail -1 "$1")
    echo "| $2 | $label | $p50 | $p99 | $p999 | $cpu | $errors |"
}

median_rows() { # ROWS LABEL...: per LABEL, the medians of its rows' p50, p99, p99.9 and CPU
    local rows=$1 label f
    shift
    for label in "$@"; do
        local cols=()
        for f in 2 3 4 5; do
            cols+=("$(awk -v w="$label" -v f="$f" '$1 == w {print $f}' "$rows" | median)")
        done
        echo "| $label | ${cols[0]} | ${cols[1]} | ${cols[2]} | ${cols[3]} |"
    done
}
