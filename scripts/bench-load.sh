#!/usr/bin/env bash
# Load-generator benchmark: `weft load` against wrk (HTTP/1.1) and h2load (h2c) at max
# throughput on fast upstreams, then its accuracy against a fixed-delay upstream and against an
# upstream that stalls once (coordinated omission). Interleaved rounds, medians reported.
#
# usage: scripts/bench-load.sh [options]
#   --rounds N        interleaved rounds; medians across rounds are reported (default 3)
#   --duration S      seconds per measurement run (default 10)
#   --sections LIST   comma list of max,accuracy,stall (default: all)
#   --quick           smoke run: 1 round of 3 s runs (unless --rounds/--duration are given)
#   --no-build        use the existing target/release/weft instead of running cargo build
#   --keep            keep the work dir (tool outputs and logs) under /tmp
#   -h, --help        this text
#
# Per round:
#   max       two fast upstreams, each on one CPU: a stand-in nginx (1 worker, `return 200`,
#             an h1 port and an h2c port) and `weft app --workers 1` (h1 + h2c on one port).
#             h1:  wrk -t1 -c32 -dS  vs  weft load --rate max -c 32 --threads 1 -d S --warmup 0s
#             h2c: h2load -t1 -c32 -m10 -D S  vs  weft load --http2 --rate max -c 32 --streams 10
#                  --threads 1 -d S --warmup 0s
#             the two tools take turns going first; req/s, the tool's own CPU per request
#             (utime+stime of its process, read from /proc by the shell that waited for it) and
#             the upstream's CPU per request (a client can make the server work harder)
#   accuracy  weft app --latency 10ms; weft load --rate 500 -c 16 -d S: p50 of latency (from the
#             intended send time) and of service time, against 10 ms
#   stall     weft app --latency 1ms --stall-after X --stall-for 1s, a fresh one started right
#             before each run, X chosen so that the stall falls mid-way through the measured
#             window (after the warm-up, if any). Three runs:
#             weft load --rate 1000 -c 16 -d S --warmup 1s (open loop): latency vs service time
#             p50/p99/p99.9/max; weft load --rate max -c 16 --threads 1 (closed loop: nothing
#             to correct, what a naive tool reports); wrk -t1 -c16 -dS --latency (closed loop;
#             wrk 4 back-fills its histogram after the run from the mean per-connection
#             interval, so its percentiles do show the stall). For the closed-loop tools,
#             requests completed per second, which drop during the stall instead of queueing
# Pinning: upstreams on CPU 1, the load tool on CPU 0.
#
# Writes target/bench/load-<timestamp>.md (and prints it).
#
# Environment:
#   WEFT_BIN                              weft binary (default target/release/weft, built here)
#   BENCH_UPSTREAM_CPU / BENCH_LOAD_CPU   CPUs for the upstreams / the load tool (default 1 / 0)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CMDLINE="scripts/bench-load.sh${*:+ $*}"
cd "$WEFT_ROOT"

# ------------------------------------------------------------------------------ options
ROUNDS="" DURATION="" SECTIONS="max,accuracy,stall" QUICK=0 BUILD=1 KEEP=0
while (($#)); do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --sections) SECTIONS=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
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
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive integer (seconds)"
IFS=, read -r -a SECTION_LIST <<<"$SECTIONS"
for s in "${SECTION_LIST[@]}"; do
    [[ $s =~ ^(max|accuracy|stall)$ ]] || die "unknown section '$s'"
done
has_section() { [[ ",$SECTIONS," == *,$1,* ]]; }
if has_section stall && ((DURATION < 3)); then
    die "the stall section needs --duration of at least 3 s (the stall alone lasts 1 s)"
fi

UP_CPU=${BENCH_UPSTREAM_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-0}
if (($(nproc) < 2)); then
    log "WARNING: fewer than 2 CPUs: upstream and load tool share CPU 0"
    UP_CPU=0 LOAD_CPU=0
fi
MAX_CONNS=32 H2_STREAMS=10        # max-throughput runs
ACC_DELAY_MS=10 ACC_RATE=500 ACC_CONNS=16
STALL_RATE=1000 STALL_CONNS=16 STALL_S=1 STALL_APP_DELAY=1ms WARMUP=1
CLK_TCK=$(getconf CLK_TCK)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ------------------------------------------------------------------------------ setup
log "setup (--bench)"
"$WEFT_ROOT/scripts/setup.sh" --bench
for tool in wrk h2load nginx taskset curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found after setup"
done
WEFT=${WEFT_BIN:-$WEFT_ROOT/target/release/weft}
if ((BUILD)) && [[ -z "${WEFT_BIN:-}" ]]; then
    log "cargo build --release -p weft"
    s=$(date +%s.%N)
    cargo build --release -p weft
    log "built in $(elapsed_since "$s")"
fi
[[ -x "$WEFT" ]] || die "weft binary $WEFT not found (build it, or set WEFT_BIN)"

WORK=$(mktemp -d /tmp/weft-bench-load.XXXXXX)
RESULTS=$WORK/results.tsv
NOTES=$WORK/notes.txt
: >"$RESULTS"
: >"$NOTES"

# ------------------------------------------------------------------------------ processes
# shellcheck source=scripts/bench-lib.sh
BG_CPU=$UP_CPU
source "$WEFT_ROOT/scripts/bench-lib.sh"

note() { # TEXT: a line for the report (deduplicated)
    grep -qxF -- "- $*" "$NOTES" 2>/dev/null || printf -- '- %s\n' "$*" >>"$NOTES"
}

record() { # ROUND SUBJECT METRIC VALUE (an empty value is not recorded)
    [[ -n "$4" ]] || return 0
    printf '%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
}

kv() { # KEY LINE: value of KEY=value in LINE
    printf '%s\n' "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'
}

# ------------------------------------------------------------------------------ load tools
# run_tool NAME CMD...: runs CMD on the load CPU, stdout to $WORK/NAME.out and stderr to
# $WORK/NAME.err; sets TOOL_OUT and TOOL_TICKS, the tool's utime+stime in clock ticks. The
# tool is the only child the wrapping shell waits for, so that shell's cutime+cstime
# (/proc/PID/stat fields 16 and 17) are the tool's CPU, all its threads included.
TOOL_OUT="" TOOL_TICKS=0
run_tool() {
    local name=$1 ticks
    shift
    TOOL_OUT=$WORK/$name.out
    # shellcheck disable=SC2016
    ticks=$(taskset -c "$LOAD_CPU" bash -c '
        out=$1; shift
        "$@" >"$out" 2>"${out%.out}.err" || exit $?
        read -r stat <"/proc/$$/stat"
        set -- ${stat##*) }
        echo $(( ${14} + ${15} ))' _ "$TOOL_OUT" "$@") || {
        log "$name failed ($*): $(tail -n 5 "${TOOL_OUT%.out}.err" "$TOOL_OUT" 2>/dev/null)"
        return 1
    }
    TOOL_TICKS=$ticks
}

cpu_ticks() { # PID: utime+stime of the process tree, in clock ticks
    local p sum=0 v
    for p in $(tree "$1"); do
        v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || v=0
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

cpu_us_per_req() { # TICKS REQUESTS
    awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN { if (n > 0) printf "%.2f", t / hz / n * 1e6 }'
}

write_lua() {
    # max: one summary line. stall: percentiles up to max, and responses per wall-clock second.
    cat >"$WORK/max.lua" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d errors=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout))
end
LUA
    cat >"$WORK/stall.lua" <<'LUA'
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) per_second = {} end
response = function(status, headers, body)
  local s = os.time()
  per_second[s] = (per_second[s] or 0) + 1
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d errors=%d p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
  local all = {}
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("per_second")) do all[s] = (all[s] or 0) + n end
  end
  local keys = {}
  for s in pairs(all) do table.insert(keys, s) end
  table.sort(keys)
  local parts = {}
  for _, s in ipairs(keys) do table.insert(parts, tostring(all[s])) end
  io.write("BENCH_PER_SECOND " .. table.concat(parts, ",") .. "\n")
end
LUA
}

# weft_json FILE: shell assignments J_* from a `weft load --json` report (eval them)
J_requests=0 J_errors=0 J_rps=0 J_non2xx=0 J_saturated=0 J_busy=0 J_warnings="" J_conn_wait=0 J_warnings_other=""
J_per_second="" J_lat_p50="" J_lat_p99="" J_lat_p999="" J_lat_max="" J_svc_p50="" J_svc_p99="" J_svc_p999="" J_svc_max=""
weft_json() {
    python3 - "$1" <<'PY'
import json, shlex, sys

def per_second(d):
    """Requests completed in each full timeline second after the warm-up."""
    counts, prev = [], 0.0
    for iv in d["timeline"]:
        if iv["t"] - prev >= 0.9 and iv["t"] > d["warmup_s"] + 0.5:
            counts.append(str(iv["completed"]))
        prev = iv["t"]
    return ",".join(counts)

d = json.load(open(sys.argv[1]))
out = {
    "requests": d["requests"],
    "errors": d["errors"],
    "rps": round(d["achieved_rate"]),
    "non2xx": sum(n for s, n in d["status_counts"].items() if not s.startswith("2")),
    "saturated": int(bool(d["client"]["saturated"])),
    "busy": round(d["client"]["worker_busy_percent"]),
    "warnings": " / ".join(d["client"]["warnings"]),
    "conn_wait": int(any("for a free connection" in w for w in d["client"]["warnings"])),
    "warnings_other": " / ".join(w for w in d["client"]["warnings"] if "for a free connection" not in w),
    "per_second": per_second(d),
}
for hist, prefix in (("latency_ms", "lat"), ("service_time_ms", "svc")):
    for q in ("p50", "p99", "p999", "max"):
        out[f"{prefix}_{q}"] = f'{d[hist][q]:.3f}'
print(" ".join(f"J_{k}={shlex.quote(str(v))}" for k, v in out.items()))
PY
}

# check_weft_run TAG [max|stall]: notes errors and non-2xx of the last weft_json and, except at
# max (where the load generator is meant to be the limit), its saturation and warnings; in the
# stall section, requests waiting for a free connection are the point, not a warning
check_weft_run() {
    ((J_errors == 0 && J_non2xx == 0)) || note "$1: $J_errors errors, $J_non2xx non-2xx responses"
    [[ ${2:-} == max ]] && return 0
    ((J_saturated == 0)) || note "$1: weft load reports itself saturated"
    local w=$J_warnings
    if [[ ${2:-} == stall ]] && ((J_conn_wait)); then
        note "stall: weft load warns that requests waited for a free connection (all $STALL_CONNS busy during the stall): expected, that queueing is what the latency histogram must show"
        w=$J_warnings_other
    fi
    [[ -z "$w" ]] || note "$1: weft load warned: $w"
}

# ------------------------------------------------------------------------------ upstreams
start_nginx() { # sets NGINX_H1, NGINX_H2 (ports)
    NGINX_H1=$(free_port)
    NGINX_H2=$(free_port)
    start_nginx_stand_in "$WORK/nginx" "$NGINX_H1" "$NGINX_H2" xxxxxxxxxxxxxxxx "$WORK/nginx.log"
    NGINX_PID=$BG_PID
    wait_200 nginx "$BG_PID" "$WORK/nginx.log" "http://127.0.0.1:$NGINX_H1/" --http1.1 ||
        die "nginx did not start"
    wait_200 "nginx h2c" "$BG_PID" "$WORK/nginx.log" "http://127.0.0.1:$NGINX_H2/" \
        --http2-prior-knowledge || die "nginx does not answer h2c on :$NGINX_H2"
    log "upstream nginx: h1 :$NGINX_H1, h2c :$NGINX_H2, pid $BG_PID on CPU $UP_CPU"
}

APP_PORT="" APP_PID=""
start_app() { # NAME ARGS...: a `weft app` with ARGS on the upstream CPU; sets APP_PORT, APP_PID
    local name=$1
    shift
    APP_PORT=$(free_port)
    start_bg "$WORK/app-$name.log" "$WEFT" app --listen "127.0.0.1:$APP_PORT" "$@"
    APP_PID=$BG_PID
    wait_200 "weft app ($name)" "$APP_PID" "$WORK/app-$name.log" "http://127.0.0.1:$APP_PORT/" \
        --http1.1 || die "weft app ($name) did not start"
}

# ------------------------------------------------------------------------------ sections
# max_pair ROUND UPSTREAM PROTO PORT PID: the peer tool and weft load at max, in turns; the
# upstream's (PID) CPU per request is measured too: a client can make the server work harder
max_pair() {
    local round=$1 up=$2 proto=$3 port=$4 up_pid=$5 url tool order u0
    url=http://127.0.0.1:$port/
    if ((round % 2)); then order="peer weft"; else order="weft peer"; fi
    for tool in $order; do
        local subject=$up/$proto/$tool reqs rps errs line
        u0=$(cpu_ticks "$up_pid")
        if [[ $tool == weft ]]; then
            local -a flags=(--rate max -c "$MAX_CONNS" --threads 1 -d "${DURATION}s" --warmup 0s --json -q)
            [[ $proto == h2c ]] && flags+=(--http2 --streams "$H2_STREAMS")
            run_tool "max-$up-$proto-weft-r$round" "$WEFT" load "$url" "${flags[@]}" || {
                note "$subject: failed in round $round"
                continue
            }
            eval "$(weft_json "$TOOL_OUT")"
            reqs=$J_requests rps=$J_rps errs=$((J_errors + J_non2xx))
            check_weft_run "$subject (round $round)" max
            record "$round" "$subject" busy_pct "$J_busy"
        elif [[ $proto == h1 ]]; then
            run_tool "max-$up-h1-wrk-r$round" wrk -t1 -c"$MAX_CONNS" -d"${DURATION}s" \
                --timeout 5s -s "$WORK/max.lua" "$url" || {
                note "$subject: failed in round $round"
                continue
            }
            line=$(grep '^BENCH ' "$TOOL_OUT" | tail -1)
            reqs=$(kv requests "$line")
            rps=$(awk -v r="$reqs" -v d="$(kv duration_us "$line")" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
            errs=$(kv errors "$line")
        else
            run_tool "max-$up-h2c-h2load-r$round" h2load -c"$MAX_CONNS" -m"$H2_STREAMS" -t1 \
                -D "$DURATION" "$url" || {
                note "$subject: failed in round $round"
                continue
            }
            # finished in 3.00s, 51234.00 req/s, 4.12MB/s
            # requests: 153702 total, 153734 started, 153702 done, 153702 succeeded, 0 failed, ...
            # status codes: 153702 2xx, 0 3xx, 0 4xx, 0 5xx
            rps=$(awk '/^finished in/ {gsub(",", ""); printf "%.0f", $4}' "$TOOL_OUT")
            reqs=$(awk '/^status codes:/ {print $3}' "$TOOL_OUT")
            local failed bad
            failed=$(awk '/^requests:/ {print $10}' "$TOOL_OUT")
            bad=$(awk '/^status codes:/ {print $5 + $7 + $9}' "$TOOL_OUT")
            # With -D, the streams still in flight when time is up count as failed.
            if ((failed <= MAX_CONNS * H2_STREAMS)); then failed=0; fi
            errs=$((failed + bad))
        fi
        [[ -n "$rps" && -n "$reqs" ]] || { note "$subject: no result in round $round"; continue; }
        local cpu up_cpu
        cpu=$(cpu_us_per_req "$TOOL_TICKS" "$reqs")
        up_cpu=$(cpu_us_per_req $(($(cpu_ticks "$up_pid") - u0)) "$reqs")
        record "$round" "$subject" rps "$rps"
        record "$round" "$subject" cpu_us "$cpu"
        record "$round" "$subject" up_cpu_us "$up_cpu"
        record "$round" "$subject" errors "$errs"
        ((errs == 0)) || note "$subject: $errs errors/non-2xx in round $round"
        local msg="round $round/$ROUNDS max $subject: $rps req/s, CPU-µs/req: tool $cpu, upstream $up_cpu"
        ((errs == 0)) || msg+=", $errs errors"
        log "$msg"
    done
}

section_max() { # ROUND
    local proto
    for proto in h1 h2c; do
        if [[ $proto == h1 ]]; then
            max_pair "$1" nginx h1 "$NGINX_H1" "$NGINX_PID"
        else
            max_pair "$1" nginx h2c "$NGINX_H2" "$NGINX_PID"
        fi
        max_pair "$1" app "$proto" "$FAST_APP_PORT" "$FAST_APP_PID"
    done
}

section_accuracy() { # ROUND
    local round=$1 subject=accuracy m v
    run_tool "accuracy-r$round" "$WEFT" load "http://127.0.0.1:$ACC_APP_PORT/" --rate "$ACC_RATE" \
        -c "$ACC_CONNS" -d "${DURATION}s" --warmup "${WARMUP}s" --json -q || {
        note "accuracy: weft load failed in round $round"
        return 0
    }
    eval "$(weft_json "$TOOL_OUT")"
    check_weft_run "accuracy (round $round)"
    local m
    for m in lat_p50 lat_p99 lat_p999 lat_max svc_p50 svc_p99 svc_p999 svc_max rps; do
        v=J_$m
        record "$round" "$subject" "$m" "${!v}"
    done
    log "round $round/$ROUNDS accuracy: at $J_rps req/s p50 latency $J_lat_p50 ms, service $J_svc_p50 ms (upstream delay ${ACC_DELAY_MS} ms)"
}

# start_stalled_app NAME LEAD_S: a fresh `weft app` that stalls once, LEAD_S (a tool's warm-up)
# plus half of what is left of the run after the stall from now, i.e. mid-way through the
# measured window of a run that starts now
start_stalled_app() {
    local after_ms=$((($2 + (DURATION - STALL_S) / 2) * 1000 + (DURATION - STALL_S) % 2 * 500))
    start_app "$1" --latency "$STALL_APP_DELAY" --stall-after "${after_ms}ms" --stall-for "${STALL_S}s"
}

stall_seen() { # TOOL ROUND MAX_MS: notes a run whose slowest answer shows no stall
    awk -v m="$3" 'BEGIN { exit !(m < 500) }' || return 0
    note "stall: $1 saw no answer slower than $3 ms in round $2: the stall fell outside its measured window (a slow start on a busy machine?); that round's figures do not show it"
}

section_stall() { # ROUND
    local round=$1 m v subject url
    # (a) weft load, open loop at a fixed rate
    subject=stall/weft
    start_stalled_app "stall-weft-r$round" "$WARMUP"
    url=http://127.0.0.1:$APP_PORT/
    if run_tool "stall-weft-r$round" "$WEFT" load "$url" --rate "$STALL_RATE" -c "$STALL_CONNS" \
        -d "${DURATION}s" --warmup "${WARMUP}s" --json -q; then
        eval "$(weft_json "$TOOL_OUT")"
        check_weft_run "stall weft load --rate $STALL_RATE (round $round)" stall
        for m in lat_p50 lat_p99 lat_p999 lat_max svc_p50 svc_p99 svc_p999 svc_max requests; do
            v=J_$m
            record "$round" "$subject" "$m" "${!v}"
        done
        stall_seen "weft load --rate $STALL_RATE" "$round" "$J_lat_max"
        log "round $round/$ROUNDS stall weft load --rate $STALL_RATE: latency p50/p99/p99.9/max $J_lat_p50/$J_lat_p99/$J_lat_p999/$J_lat_max ms, service time $J_svc_p50/$J_svc_p99/$J_svc_p999/$J_svc_max ms"
    else
        note "stall: weft load --rate $STALL_RATE failed in round $round"
    fi
    stop_pid "$APP_PID"
    # (b) weft load --rate max: closed loop, so nothing is corrected (latency = service time)
    subject=stall/weft-max
    start_stalled_app "stall-weft-max-r$round" "$WARMUP"
    url=http://127.0.0.1:$APP_PORT/
    if run_tool "stall-weft-max-r$round" "$WEFT" load "$url" --rate max -c "$STALL_CONNS" \
        --threads 1 -d "${DURATION}s" --warmup "${WARMUP}s" --json -q; then
        eval "$(weft_json "$TOOL_OUT")"
        check_weft_run "stall weft load --rate max (round $round)" max
        for m in lat_p50 lat_p99 lat_p999 lat_max requests per_second; do
            v=J_$m
            record "$round" "$subject" "$m" "${!v}"
        done
        stall_seen "weft load --rate max" "$round" "$J_lat_max"
        log "round $round/$ROUNDS stall weft load --rate max: $J_requests requests, latency p50/p99/p99.9/max $J_lat_p50/$J_lat_p99/$J_lat_p999/$J_lat_max ms; per second: $J_per_second"
    else
        note "stall: weft load --rate max failed in round $round"
    fi
    stop_pid "$APP_PID"
    # (c) wrk: closed loop, no warm-up
    subject=stall/wrk
    start_stalled_app "stall-wrk-r$round" 0
    url=http://127.0.0.1:$APP_PORT/
    if run_tool "stall-wrk-r$round" wrk -t1 -c"$STALL_CONNS" -d"${DURATION}s" --timeout 5s --latency \
        -s "$WORK/stall.lua" "$url"; then
        local line per_second
        line=$(grep '^BENCH ' "$TOOL_OUT" | tail -1)
        # the first and last wall-clock seconds are partial
        per_second=$(awk '/^BENCH_PER_SECOND / {print $2}' "$TOOL_OUT" | tail -1 |
            awk -F, '{ for (i = 2; i < NF; i++) printf "%s%s", $i, (i < NF - 1 ? "," : "") }')
        for m in p50 p99 p999 max; do
            record "$round" "$subject" "lat_$m" "$(awk -v u="$(kv "${m}_us" "$line")" 'BEGIN { printf "%.3f", u / 1000 }')"
        done
        record "$round" "$subject" requests "$(kv requests "$line")"
        record "$round" "$subject" errors "$(kv errors "$line")"
        record "$round" "$subject" per_second "$per_second"
        stall_seen wrk "$round" "$(awk -v u="$(kv max_us "$line")" 'BEGIN { printf "%.1f", u / 1000 }')"
        log "round $round/$ROUNDS stall wrk: $(kv requests "$line") requests, p99 $(kv p99_us "$line") µs, max $(kv max_us "$line") µs; per second: $per_second"
    else
        note "stall: wrk failed in round $round"
    fi
    stop_pid "$APP_PID"
}

# ------------------------------------------------------------------------------ run
write_lua
TS=$(date +%Y%m%d-%H%M%S)
# the source the binary was built from, read now: others may commit during the run
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' (with uncommitted changes under crates/)')"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
awk '$1 > 0.5 { exit 1 }' /proc/loadavg ||
    log "WARNING: load average $LOAD_BEFORE: other work on this machine will skew the numbers"
if has_section max; then
    start_nginx
    start_app fast --workers 1
    FAST_APP_PORT=$APP_PORT FAST_APP_PID=$APP_PID
    wait_200 "weft app h2c" "$APP_PID" "$WORK/app-fast.log" "http://127.0.0.1:$APP_PORT/" \
        --http2-prior-knowledge || die "weft app does not answer h2c"
    log "upstream weft app --workers 1: h1 + h2c :$APP_PORT, pid $APP_PID on CPU $UP_CPU"
fi
if has_section accuracy; then
    start_app accuracy --latency "${ACC_DELAY_MS}ms"
    ACC_APP_PORT=$APP_PORT
fi

per_round=0
has_section max && per_round=$((per_round + 8 * (DURATION + 1)))
has_section accuracy && per_round=$((per_round + DURATION + WARMUP + 1))
has_section stall && per_round=$((per_round + 3 * DURATION + 2 * WARMUP + 6))
est=$((ROUNDS * per_round))
log "$ROUNDS round(s) of [${SECTION_LIST[*]}], ${DURATION} s runs: about $((est / 60)) min $((est % 60)) s"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    has_section max && section_max "$ROUND"
    has_section accuracy && section_accuracy "$ROUND"
    has_section stall && section_stall "$ROUND"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------------------ report
mkdir -p "$WEFT_ROOT/target/bench"
OUT=$WEFT_ROOT/target/bench/load-$TS.md
cp "$RESULTS" "$WEFT_ROOT/target/bench/load-$TS.tsv"
{
    echo "# weft load benchmark $TS"
    echo
    echo "\`$CMDLINE\`"
    echo
    echo "- commit $COMMIT at the start, $(uname -sr), $(nproc) CPUs: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    [[ -z "${WEFT_BIN:-}" ]] || echo "- weft binary: $WEFT_BIN"
    echo "- $ROUNDS round(s), interleaved; medians across rounds. ${DURATION} s per run. Pinning: upstreams on CPU $UP_CPU, load tool on CPU $LOAD_CPU"
    printf -- '- versions: %s; %s; %s\n' \
        "$(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}')" \
        "$(h2load --version 2>&1 | head -1)" \
        "$(nginx -v 2>&1 | awk -F/ '{print "nginx " $2}')"
    echo "- load average at start: $LOAD_BEFORE; at end: $LOAD_AFTER"
    echo
    python3 - "$RESULTS" "$MAX_CONNS" "$H2_STREAMS" "$ACC_DELAY_MS" "$ACC_RATE" "$ACC_CONNS" \
        "$STALL_RATE" "$STALL_CONNS" "$DURATION" <<'PY'
import collections, statistics, sys

res, conns, streams, delay, acc_rate, acc_conns, stall_rate, stall_conns, dur = sys.argv[1:]
delay = float(delay)
rows = collections.defaultdict(lambda: collections.defaultdict(dict))  # subject -> metric -> round -> v
for line in open(res):
    rnd, subject, metric, value = line.rstrip("\n").split("\t")
    rows[subject][metric][int(rnd)] = value

def vals(subject, metric):
    return {r: float(v) for r, v in rows.get(subject, {}).get(metric, {}).items()}

def med(subject, metric):
    v = list(vals(subject, metric).values())
    return statistics.median(v) if v else None

def fmt(v, nd=0):
    return "–" if v is None else f"{v:,.{nd}f}"

verdicts = []

# ---------------------------------------------------------------- max
if any(s.startswith(("nginx/", "app/")) for s in rows):
    peers = {"h1": "wrk", "h2c": "h2load"}
    cmds = {
        "wrk": f"`wrk -t1 -c{conns}`",
        "h2load": f"`h2load -t1 -c{conns} -m{streams}`",
        ("weft", "h1"): f"`weft load --rate max -c {conns} --threads 1`",
        ("weft", "h2c"): f"`weft load --http2 --rate max -c {conns} --streams {streams} --threads 1`",
    }
    print("### Max throughput, fast upstream\n")
    def busy(subject, key):
        # share of its one CPU a process used: CPU-µs per request x requests per second
        c, r = med(subject, key), med(subject, "rps")
        return None if c is None or r is None else c * r / 1e4

    print("| upstream | proto | tool | req/s | tool CPU-µs / req | upstream CPU-µs / req | CPU % tool / upstream |")
    print("|---|---|---|---:|---:|---:|---:|")
    upstream_bound = False
    ratio_lines = []
    for up, up_name in (("nginx", "nginx `return 200`"), ("app", "`weft app --workers 1`")):
        for proto in ("h1", "h2c"):
            peer = peers[proto]
            ps, ws = f"{up}/{proto}/peer", f"{up}/{proto}/weft"
            if ps not in rows and ws not in rows:
                continue
            for subject, cmd in ((ps, cmds[peer]), (ws, cmds[("weft", proto)])):
                tb, ub = busy(subject, "cpu_us"), busy(subject, "up_cpu_us")
                upstream_bound |= ub is not None and ub >= 90
                print(f"| {up_name} | {proto} | {cmd} | {fmt(med(subject, 'rps'))} | {fmt(med(subject, 'cpu_us'), 2)} "
                      f"| {fmt(med(subject, 'up_cpu_us'), 2)} | {fmt(tb)} / {fmt(ub)} |")
            # paired per round (the two runs of a round are back to back), then the median
            pr, wr = vals(ps, "rps"), vals(ws, "rps")
            ratios = [wr[r] / pr[r] for r in sorted(wr) if r in pr and pr[r] > 0]
            pc, wc = vals(ps, "cpu_us"), vals(ws, "cpu_us")
            cratios = [wc[r] / pc[r] for r in sorted(wc) if r in pc and pc[r] > 0]
            if ratios:
                m = statistics.median(ratios)
                cpu = f"{statistics.median(cratios):.2f}" if cratios else "–"
                ratio_lines.append(
                    f"| {up_name} | {proto} | weft load / {peer} | **{m:.2f}** "
                    f"| {', '.join(f'{x:.2f}' for x in ratios)} | {cpu} |")
                verdicts.append((f"max throughput >= 0.90x {peer} ({proto}, {up_name})",
                                 f"{m:.3f}x", "yes" if m >= 0.9 else "**no**"))
    print()
    if ratio_lines:
        print("| upstream | proto | ratio | throughput (median of rounds) | per round | CPU per request |")
        print("|---|---|---|---:|---|---:|")
        print("\n".join(ratio_lines))
        print()
    if upstream_bound:
        print("With one CPU for the upstream, a run whose upstream is at ~100% CPU is bounded by the "
              "upstream: there the req/s ratio says that weft load keeps up with the peer, not how much "
              "headroom either has; the tool's CPU per request (and CPU %) tells that.\n")

# ---------------------------------------------------------------- accuracy
if "accuracy" in rows:
    s = "accuracy"
    print(f"### Accuracy: upstream with a fixed {delay:g} ms delay\n")
    print(f"`weft app --latency {delay:g}ms`; `weft load --rate {acc_rate} -c {acc_conns} -d {dur}s`.\n")
    print("| histogram | p50 ms | p99 ms | p99.9 ms | max ms | p50 minus the delay |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, p in (("latency (from the intended send time)", "lat"), ("service time (from the actual send)", "svc")):
        p50 = med(s, f"{p}_p50")
        print(f"| {label} | {fmt(p50, 3)} | {fmt(med(s, f'{p}_p99'), 3)} | {fmt(med(s, f'{p}_p999'), 3)} "
              f"| {fmt(med(s, f'{p}_max'), 3)} | {'–' if p50 is None else f'{p50 - delay:+.3f} ms'} |")
    p50 = med(s, "lat_p50")
    if p50 is not None:
        verdicts.append((f"p50 within 1 ms of a fixed {delay:g} ms delay", f"{p50:.3f} ms ({p50 - delay:+.3f})",
                         "yes" if abs(p50 - delay) <= 1 else "**no**"))
    print()

# ---------------------------------------------------------------- stall
w, c, k = "stall/weft", "stall/weft-max", "stall/wrk"
if any(x in rows for x in (w, c, k)):
    print("### Coordinated omission: an upstream that stalls every response once, for 1 s\n")
    print(f"`weft app --latency 1ms --stall-after X --stall-for 1s`, X placing the stall mid-way "
          f"through the {dur} s measured window; a fresh app for each run.\n")
    print("| tool | histogram | p50 ms | p99 ms | p99.9 ms | max ms | requests |")
    print("|---|---|---:|---:|---:|---:|---:|")
    def row(subject, tool, label, p):
        print(f"| {tool} | {label} | {fmt(med(subject, f'{p}_p50'), 2)} | {fmt(med(subject, f'{p}_p99'), 2)} "
              f"| {fmt(med(subject, f'{p}_p999'), 2)} | {fmt(med(subject, f'{p}_max'), 1)} "
              f"| {fmt(med(subject, 'requests'))} |")
    if w in rows:
        tool = f"`weft load --rate {stall_rate} -c {stall_conns}` (open loop)"
        row(w, tool, "latency, from the intended send time", "lat")
        row(w, tool, "service time, from the actual send", "svc")
    if c in rows:
        row(c, f"`weft load --rate max -c {stall_conns} --threads 1` (closed loop)",
            "latency (= service time: nothing is corrected)", "lat")
    if k in rows:
        row(k, f"`wrk -t1 -c{stall_conns} --latency` (closed loop)",
            "latency, after wrk's own post-hoc correction", "lat")
    print()
    per_second = [(s, r, ps) for s in (c, k) for r, ps in sorted(rows.get(s, {}).get("per_second", {}).items())]
    if per_second:
        print("Closed-loop tools: requests completed per full second of the run (the stall second is the low one):\n")
        print("| tool | round | per second | median second | lowest second |")
        print("|---|---|---|---:|---:|")
        for s, r, ps in per_second:
            counts = [int(x) for x in ps.split(",") if x]
            if counts:
                name = "weft load --rate max" if s == c else "wrk"
                print(f"| {name} | {r} | {', '.join(f'{n:,}' for n in counts)} "
                      f"| {statistics.median(counts):,.0f} | {min(counts):,} |")
        print()
    if w in rows:
        lp99, sp99 = med(w, "lat_p99"), med(w, "svc_p99")
        verdicts.append(("stall: latency p99 reflects the 1 s stall",
                         f"p99 {lp99:,.0f} ms", "yes" if lp99 >= 500 else "**no**"))
        verdicts.append(("stall: the service-time p99 does not",
                         f"p99 {sp99:.2f} ms", "yes" if sp99 < 100 else "**no**"))

if verdicts:
    print("### Against the issue's targets\n")
    print("| target | result | met? |")
    print("|---|---|---|")
    for t, r, m in verdicts:
        print(f"| {t} | {r} | {m} |")
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
