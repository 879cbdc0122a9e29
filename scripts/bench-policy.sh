#!/usr/bin/env bash
# Traffic-policy scenario benchmark (issue 5): three `weft app` endpoints of one Service on
# loopback, reached through a weft sidecar (`weft proxy --config DIR` with a TrafficPolicy) and
# through Envoy (static bootstrap with its nearest equivalents), under `weft load` at a fixed
# rate (open loop, HTTP/1.1). Faults are set on the apps at runtime (POST /_weft/fault), so the
# same three apps serve every run; their own counters (GET /_weft/stats) say who got how many
# requests. Interleaved rounds, medians reported. Not part of CI.
#
# usage: scripts/bench-policy.sh [options]
#   --rounds N        interleaved rounds; medians across rounds are reported (default 3)
#   --duration S      seconds per run of the slow and tail scenarios; the bad and outage
#                     scenarios run twice as long (default 8)
#   --scenario LIST   comma list of slow,bad,tail,outage (default: all)
#   --bad-after S     how long the bad scenario keeps running after the fault ends (default:
#                     a quarter of its run); long enough, it shows the healed endpoint's
#                     re-admission and weight ramp (outlier ejection 30 s + recovery 10 s)
#   --proxies LIST    comma list of weft,envoy (default: both)
#   --quick           smoke run: 1 round of 4 s runs (unless --rounds/--duration are given)
#   --no-build        use the existing target/release/weft instead of running cargo build
#   --keep            keep the work dir (configs, logs, raw outputs) under /tmp
#   -h, --help        this text
#
# Scenarios (endpoints answer in 1 ms unless said otherwise; rows in this order):
#   slow     one endpoint answers in 10 ms. Baseline first: weft (no policy: its default) and Envoy
#            ROUND_ROBIN with all three healthy; then weft loadBalancer RoundRobin, LeastRequest,
#            LatencyAware; Envoy ROUND_ROBIN, LEAST_REQUEST. p50/p99/p99.9 and the slow
#            endpoint's share of the requests the apps received.
#   bad      one endpoint answers 50% of requests with `x-biz-code: 5003` (HTTP 200) from 1/4 of
#            the run to 3/4 (a runtime fault with `for=`). weft without a policy; weft with
#            failureCodes.header {x-biz-code: [5003]} + retry {maxRetries: 2}; Envoy with
#            retry_on retriable-headers (x-biz-code 5003, 2 retries, other hosts). Client-visible
#            success (failed attempts minus the retries that hid them: each extra attempt
#            follows one failed attempt, there is no hedging here), the bad endpoint's share
#            before / during / after (apps' counters every 0.5 s), how long after the fault
#            its share fell below half of what it was.
#   tail     every endpoint answers 2% of requests in 100 ms (--slow-share). weft: no hedging;
#            hedging {delay: 5ms}; hedging {percentile: 95}; Envoy: no hedging;
#            hedge_on_per_try_timeout with per_try_timeout 5 ms and a 1 ms retry back-off (as
#            weft control sends it; Envoy's default 25 ms back-off delays each hedge by up to
#            25 ms more). p99, p99.9 and extra requests
#            (app requests / client requests - 1).
#   outage   every endpoint answers in 200 ms from 1/4 of the run for 1/4 of it, then recovers.
#            weft: hedging {delay: 10ms} + retry {maxRetries: 2} + budget {percent: 10,
#            minPerSecond: 10}; Envoy: hedge on a 10 ms per-try timeout (1 retry) with
#            retry_budget 10%. Extra requests during the outage against the budget, per-second
#            p99 before / worst during / after, and when it recovered.
# Rates: 1000 req/s over 32 connections; outage 500 req/s over 256 connections (200 ms answers
# need ~100 in flight). Every run is preceded by a 1 s warm-up at its rate, not measured.
# Pinning: apps and proxy on CPU 1 (one worker/thread each), load tool and sampler on CPU 0.
#
# Writes target/bench/policy-<timestamp>.md (and prints it); raw values in the .tsv beside it.
#
# Environment:
#   WEFT_BIN                               weft binary (default target/release/weft, built here)
#   BENCH_PROXY_CPU / BENCH_LOAD_CPU       CPUs for apps+proxy / load tool (default 1 / 0)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CMDLINE="scripts/bench-policy.sh${*:+ $*}"
cd "$WEFT_ROOT"

# ------------------------------------------------------------------------------ options
ROUNDS="" DURATION="" SCENARIOS="slow,bad,tail,outage" PROXIES="weft,envoy" QUICK=0 BUILD=1 KEEP=0
BAD_AFTER=""
while (($#)); do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --scenario|--scenarios) SCENARIOS=$2; shift 2 ;;
        --proxies) PROXIES=$2; shift 2 ;;
        --bad-after) BAD_AFTER=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if ((QUICK)); then
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-4}
fi
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-8}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive integer (seconds)"
((DURATION >= 2)) || die "--duration must be at least 2 s (the bad and outage scenarios are split in quarters)"
[[ -z $BAD_AFTER || $BAD_AFTER =~ ^[1-9][0-9]*$ ]] || die "--bad-after must be a positive integer (seconds)"
IFS=, read -r -a SCENARIO_LIST <<<"$SCENARIOS"
for s in "${SCENARIO_LIST[@]}"; do
    [[ $s =~ ^(slow|bad|tail|outage)$ ]] || die "unknown scenario '$s' (slow, bad, tail, outage)"
done
IFS=, read -r -a PROXY_LIST <<<"$PROXIES"
for p in "${PROXY_LIST[@]}"; do
    [[ $p =~ ^(weft|envoy)$ ]] || die "unknown proxy '$p' (weft, envoy)"
done
has_proxy() { [[ ",$PROXIES," == *,$1,* ]]; }

PROXY_CPU=${BENCH_PROXY_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-0}
if (($(nproc) < 2)); then
    log "WARNING: fewer than 2 CPUs: apps, proxy and load tool share CPU 0"
    PROXY_CPU=0 LOAD_CPU=0
fi
AUTHORITY=catalog                 # the Service the client asks for (Host)
RATE=1000 CONNS=32                # slow, bad, tail
OUTAGE_RATE=500 OUTAGE_CONNS=256  # outage: 200 ms answers
FAST=1ms SLOW=10ms                # slow: the slow endpoint
TAIL_SHARE=0.02 TAIL_LATENCY=100ms
BIZ_SHARE=0.5 BIZ_HEADER=x-biz-code BIZ_CODE=5003
OUTAGE_LATENCY=200ms
HEDGE_DELAY_MS=5 OUTAGE_HEDGE_MS=10 BUDGET_PCT=10 BUDGET_MIN_PER_S=10
SAMPLE_S=0.5                      # the apps' counters are read this often
WARMUP=1
LONG=$((2 * DURATION))            # bad and outage runs
BAD_FROM_MS=$((LONG * 250)) BAD_FOR_MS=$((LONG * 500))
BAD_AFTER=${BAD_AFTER:-$((LONG / 4))}
BAD_LONG=$(((BAD_FROM_MS + BAD_FOR_MS) / 1000 + BAD_AFTER))   # the bad scenario's runs
OUTAGE_FROM_MS=$((LONG * 250)) OUTAGE_FOR_MS=$((LONG * 250))
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ------------------------------------------------------------------------------ setup
log "setup"
"$WEFT_ROOT/scripts/setup.sh"
for tool in taskset curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found after setup"
done
ENVOY=$(envoy_bin)
if has_proxy envoy; then
    [[ -x "$ENVOY" ]] || die "envoy not found at $ENVOY (scripts/setup.sh installs it)"
fi
WEFT=${WEFT_BIN:-$WEFT_ROOT/target/release/weft}
if ((BUILD)) && [[ -z "${WEFT_BIN:-}" ]]; then
    log "cargo build --release -p weft"
    s=$(date +%s.%N)
    cargo build --release -p weft
    log "built in $(elapsed_since "$s")"
fi
[[ -x "$WEFT" ]] || die "weft binary $WEFT not found (build it, or set WEFT_BIN)"
grep -q -- --biz-error-share <("$WEFT" app --help) ||
    die "$WEFT has no runtime faults (weft app --biz-error-share); rebuild it"

WORK=$(mktemp -d /tmp/weft-bench-policy.XXXXXX)
RESULTS=$WORK/results.tsv
NOTES=$WORK/notes.txt
: >"$RESULTS"
: >"$NOTES"

# ------------------------------------------------------------------------------ processes
# shellcheck source=scripts/bench-lib.sh
BG_CPU=$PROXY_CPU
source "$WEFT_ROOT/scripts/bench-lib.sh"

note() { # TEXT: a line for the report (deduplicated)
    grep -qxF -- "- $*" "$NOTES" 2>/dev/null || printf -- '- %s\n' "$*" >>"$NOTES"
}

record() { # ROUND SCENARIO ROW METRIC VALUE (an empty value is not recorded)
    [[ -n "$5" ]] || return 0
    printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
}

# ------------------------------------------------------------------------------ helpers (python)
write_helpers() {
    # sampler.py OUT INTERVAL app:NAME:URL... at:SECONDS:METHOD:URL...
    # Reads every app's /_weft/stats every INTERVAL seconds (from its start) and fires the
    # scheduled requests (runtime faults) at their time; until SIGTERM, then one last read.
    # Lines: t, app, requests, errors, biz_errors, slow (tab-separated); "#" lines are events.
    cat >"$WORK/sampler.py" <<'PY'
import json, signal, sys, time, urllib.request

out_path, interval = sys.argv[1], float(sys.argv[2])
apps, events = [], []
for arg in sys.argv[3:]:
    kind, rest = arg.split(":", 1)
    if kind == "app":
        name, url = rest.split(":", 1)
        apps.append((name, url))
    else:
        at, method, url = rest.split(":", 2)
        events.append((float(at), method, url))
events.sort()
out = open(out_path, "w", buffering=1)

def stop(*_):
    raise SystemExit(0)

signal.signal(signal.SIGTERM, stop)
t0 = time.monotonic()

def sample():
    t = time.monotonic() - t0
    for name, url in apps:
        try:
            with urllib.request.urlopen(url + "/_weft/stats", timeout=2) as r:
                s = json.load(r)
            out.write(f"{t:.3f}\t{name}\t{s['requests']}\t{s['errors']}\t{s['biz_errors']}\t{s['slow']}\n")
        except Exception as e:  # a missed read shows as a gap, not a crash
            out.write(f"#{t:.3f}\tread {name} failed: {e}\n")

def fire(method, url):
    t = time.monotonic() - t0
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=2) as r:
            out.write(f"#{t:.3f}\t{method} {url}: {r.status}\n")
    except Exception as e:
        out.write(f"#{t:.3f}\t{method} {url} failed: {e}\n")

try:
    n = 0
    while True:
        due = n * interval
        while events and events[0][0] <= due:
            at, method, url = events.pop(0)
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            fire(method, url)
        time.sleep(max(0.0, due - (time.monotonic() - t0)))
        sample()
        n += 1
finally:
    sample()
PY
    # analyze.py LOAD_JSON SAMPLES TARGET_APP WINDOW_FROM WINDOW_TO RATE: KEY=VALUE lines.
    # The window (seconds from the start of the measured run; "-" for none) is when the
    # fault was on. Samples are attributed to the window by their midpoint.
    cat >"$WORK/analyze.py" <<'PY'
import collections, json, statistics, sys

load_path, samples_path, target, w_from, w_to, rate = sys.argv[1:]
w_from = None if w_from == "-" else float(w_from)
w_to = None if w_to == "-" else float(w_to)
rate = float(rate)
d = json.load(open(load_path))
out = {}
lat = d["latency_ms"]
for q in ("p50", "p99", "p999", "max"):
    out[q] = f'{lat[q]:.3f}'
requests = d["requests"]
non2xx = sum(n for s, n in d["status_counts"].items() if not s.startswith("2"))
out["requests"] = requests
out["errors"] = d["errors"]
out["non2xx"] = non2xx
out["saturated"] = int(bool(d["client"]["saturated"]))

samples = collections.defaultdict(dict)  # t -> app -> (requests, errors, biz, slow)
for line in open(samples_path):
    if line.startswith("#"):
        continue
    t, app, *v = line.rstrip("\n").split("\t")
    samples[float(t)][app] = tuple(int(x) for x in v)
apps = sorted({a for s in samples.values() for a in s})
times = [t for t in sorted(samples) if len(samples[t]) == len(apps)]
if len(times) >= 2 and requests:
    first, last = samples[times[0]], samples[times[-1]]
    total = {a: last[a][0] - first[a][0] for a in apps}
    app_requests = sum(total.values())
    out["app_requests"] = app_requests
    out["extra_pct"] = f"{(app_requests / requests - 1) * 100:.2f}"
    if target in total and app_requests:
        out["target_share_pct"] = f"{total[target] / app_requests * 100:.2f}"
    biz = sum(last[a][2] - first[a][2] for a in apps)
    out["failed_attempts"] = biz
    # Every extra attempt (a retry) follows one failed attempt and hides it.
    visible = max(0, biz - max(0, app_requests - requests)) + d["errors"]
    out["visible_failures"] = visible
    out["success_pct"] = f"{(1 - visible / requests) * 100:.3f}"
    deltas = []  # (start, end, {app: requests}, {app: biz})
    for a, b in zip(times, times[1:]):
        deltas.append((a, b, {x: samples[b][x][0] - samples[a][x][0] for x in apps}))
    if w_from is not None:
        phases = {"before": [], "during": [], "after": []}
        for a, b, reqs in deltas:
            mid = (a + b) / 2
            key = "before" if mid < w_from else "during" if mid < w_to else "after"
            phases[key].append((a, b, reqs))

        def share(rows):
            all_ = sum(sum(r.values()) for _, _, r in rows)
            return None if not all_ else sum(r.get(target, 0) for _, _, r in rows) / all_ * 100

        # The first and last samples hold part of a second of load only: no rate in them.
        inner = deltas[1:-1]
        for key, rows in phases.items():
            s = share(rows)
            if s is not None:
                out[f"share_{key}_pct"] = f"{s:.2f}"
            rows = [x for x in rows if x in inner]
            secs = sum(b - a for a, b, _ in rows)
            if secs > 0:
                sent = sum(sum(r.values()) for _, _, r in rows)
                out[f"extra_{key}_pct"] = f"{(sent / (rate * secs) - 1) * 100:.2f}"
        before = share(phases["before"])
        if before:
            fell = next((b - w_from for a, b, r in phases["during"]
                         if sum(r.values()) and r.get(target, 0) / sum(r.values()) * 100 < before / 2), None)
            out["share_halved_s"] = "-1" if fell is None else f"{fell:.1f}"
            # After the fault: when the healed endpoint is back to half its
            # share, and its share over the last 5 s of the run.
            back = next((b - w_to for a, b, r in phases["after"]
                         if sum(r.values()) and r.get(target, 0) / sum(r.values()) * 100 >= before / 2), None)
            out["share_back_s"] = "-1" if back is None else f"{back:.1f}"
            end = [x for x in deltas if x[1] > deltas[-1][1] - 5]
            s_end = share(end)
            if s_end is not None:
                out["share_end_pct"] = f"{s_end:.2f}"
        # the fault window only: all client-visible failures happen in it
        if w_to > w_from:
            out["success_during_pct"] = f"{(1 - visible / (rate * (w_to - w_from))) * 100:.3f}"
        out["share_timeline"] = ",".join(
            f"{r.get(target, 0) / sum(r.values()) * 100:.0f}" if sum(r.values()) else "-"
            for _, _, r in deltas)
        out["extra_timeline"] = ",".join(
            f"{(sum(r.values()) / (rate * (b - a)) - 1) * 100:.0f}" for a, b, r in inner)
    if w_from is not None:
        tl = [iv for iv in d["timeline"] if not iv["warmup"]]
        before = [iv["p99_ms"] for iv in tl if iv["t"] <= w_from + 0.05]
        during = [iv["p99_ms"] for iv in tl if w_from + 0.05 < iv["t"] <= w_to + 1.05]
        after = [iv["p99_ms"] for iv in tl if iv["t"] - 1 >= w_to + 0.95]
        if before:
            base = statistics.median(before)
            out["p99_before"] = f"{base:.3f}"
            rec = next((iv["t"] - w_to for iv in tl
                        if iv["t"] > w_to + 0.05 and iv["p99_ms"] <= max(2 * base, base + 2)), None)
            out["recovered_s"] = "-1" if rec is None else f"{rec:.1f}"
        if during:
            out["p99_during_max"] = f"{max(during):.3f}"
        if after:
            out["p99_after"] = f"{statistics.median(after):.3f}"
        out["p99_timeline"] = ",".join(f'{iv["p99_ms"]:.1f}' for iv in tl)
print("\n".join(f"{k}={v}" for k, v in out.items()))
PY
}

# ------------------------------------------------------------------------------ apps
APP_PORTS=() APP_PIDS=()
start_apps() { # three `weft app`s, no faults; their faults are set per run
    local i port
    for i in 1 2 3; do
        port=$(free_port)
        start_bg "$WORK/app$i.log" "$WEFT" app --listen "127.0.0.1:$port" --name "app$i" --workers 1
        APP_PORTS+=("$port") APP_PIDS+=("$BG_PID")
        wait_200 "app$i" "$BG_PID" "$WORK/app$i.log" "http://127.0.0.1:$port/_weft/stats" ||
            die "weft app $i did not start"
    done
    log "apps app1..app3 on :${APP_PORTS[*]}, CPU $PROXY_CPU"
}

app_url() { printf 'http://127.0.0.1:%s' "${APP_PORTS[$(($1 - 1))]}"; }

set_faults() { # APP(1-3) QUERY: sets every fault field (QUERY overrides the 1 ms default)
    local q="latency=$FAST&jitter=0ms&error_rate=0&slow_share=0&slow_latency=0ms&biz_error_share=0&biz_error_header=$BIZ_HEADER:$BIZ_CODE${2:+&$2}"
    local code
    code=$(curl -s -o "$WORK/fault.out" -w '%{http_code}' --max-time 2 -X POST "$(app_url "$1")/_weft/fault?$q") || code=000
    [[ $code == 200 ]] || die "app$1: POST /_weft/fault?$q answered $code: $(cat "$WORK/fault.out" 2>/dev/null)"
}

faults_for() { # MODE: healthy | slow | tail
    local i
    for i in 1 2 3; do set_faults "$i" ""; done
    case "$1" in
        healthy) ;;
        slow) set_faults 3 "latency=$SLOW" ;;
        tail) for i in 1 2 3; do set_faults "$i" "slow_share=$TAIL_SHARE&slow_latency=$TAIL_LATENCY"; done ;;
        *) die "faults_for: unknown mode $1" ;;
    esac
}

# ------------------------------------------------------------------------------ proxies
# weft_policy KEY: the TrafficPolicy spec sections for a row (nothing for none)
weft_policy() {
    case "$1" in
        none) ;;
        rr) echo "  loadBalancer: {type: RoundRobin}" ;;
        lr) echo "  loadBalancer: {type: LeastRequest}" ;;
        la) echo "  loadBalancer: {type: LatencyAware}" ;;
        biz) printf '%s\n' \
            "  failureCodes:" \
            "    header: {name: $BIZ_HEADER, values: [\"$BIZ_CODE\"]}" \
            "  retry: {maxRetries: 2, backoff: {base: 1ms, max: 5ms}}" ;;
        hedge-fixed) echo "  hedging: {delay: ${HEDGE_DELAY_MS}ms, maxAttempts: 2}" ;;
        hedge-p95) echo "  hedging: {percentile: 95, maxAttempts: 2}" ;;
        outage) printf '%s\n' \
            "  hedging: {delay: ${OUTAGE_HEDGE_MS}ms, maxAttempts: 2}" \
            "  retry: {maxRetries: 2, backoff: {base: 1ms, max: 5ms}}" \
            "  budget: {percent: $BUDGET_PCT, minPerSecond: $BUDGET_MIN_PER_S, window: 10s}" ;;
        *) die "weft_policy: unknown key $1" ;;
    esac
}

ENVOY_PREVIOUS_HOSTS='retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}]'

indent() { # N: prefixes every line of stdin with N spaces
    local pad
    pad=$(printf '%*s' "$1" '')
    sed "s/^/$pad/"
}

# envoy_route KEY: lines under the route's `route:` (18 spaces deep), after `cluster:`
envoy_route() {
    case "$1" in
        rr|lr) ;;
        biz) printf '%s\n' \
            "retry_policy:" \
            "  retry_on: retriable-headers" \
            "  num_retries: 2" \
            "  retriable_headers: [{name: $BIZ_HEADER, string_match: {exact: \"$BIZ_CODE\"}}]" \
            "  retry_back_off: {base_interval: 0.001s, max_interval: 0.005s}" \
            "  $ENVOY_PREVIOUS_HOSTS" \
            "  host_selection_retry_max_attempts: 3" | indent 18 ;;
        hedge-fixed|outage)
            local ms=$HEDGE_DELAY_MS
            [[ $1 == outage ]] && ms=$OUTAGE_HEDGE_MS
            printf '%s\n' \
                "retry_policy:" \
                "  retry_on: 5xx,reset,connect-failure" \
                "  num_retries: 1" \
                "  per_try_timeout: $(awk -v m="$ms" 'BEGIN { printf "%.3fs", m / 1000 }')" \
                "  retry_back_off: {base_interval: 0.001s, max_interval: 0.001s}" \
                "  $ENVOY_PREVIOUS_HOSTS" \
                "  host_selection_retry_max_attempts: 3" \
                "hedge_policy: {hedge_on_per_try_timeout: true}" | indent 18 ;;
        *) die "envoy_route: unknown key $1" ;;
    esac
}

envoy_lb() { if [[ $1 == lr ]]; then echo LEAST_REQUEST; else echo ROUND_ROBIN; fi; }

envoy_cluster() { # KEY: lines of the cluster (4 spaces deep)
    if [[ $1 == outage ]]; then
        printf '%s\n' "circuit_breakers:" \
            "  thresholds: [{retry_budget: {budget_percent: {value: $BUDGET_PCT}, min_retry_concurrency: $BUDGET_MIN_PER_S}}]" |
            indent 4
    fi
}

# start_proxy PROXY KEY DIR: sets P_PID, P_PORT, P_LOG; returns 1 if it does not come up
P_PID="" P_PORT="" P_LOG=""
start_proxy() {
    local proxy=$1 key=$2 dir=$3 admin i
    mkdir -p "$dir"
    P_LOG=$dir/log P_PORT=$(free_port) admin=$(free_port)
    if [[ $proxy == weft ]]; then
        mkdir -p "$dir/config"
        {
            echo "apiVersion: weft.dev/v1alpha1"
            echo "kind: Service"
            echo "metadata: {name: $AUTHORITY}"
            echo "spec:"
            echo "  ports: [{port: 8080, protocol: http}]"
            echo "  endpoints:"
            for i in 1 2 3; do echo "  - {address: \"127.0.0.1:${APP_PORTS[$((i - 1))]}\"}"; done
            local policy
            policy=$(weft_policy "$key")
            if [[ -n $policy ]]; then
                echo "---"
                echo "apiVersion: weft.dev/v1alpha1"
                echo "kind: TrafficPolicy"
                echo "metadata: {name: bench-$key}"
                echo "spec:"
                echo "  targetRefs: [{kind: Service, name: $AUTHORITY}]"
                printf '%s\n' "$policy"
            fi
        } >"$dir/config/catalog.yaml"
        start_bg "$P_LOG" "$WEFT" proxy --config "$dir/config" --service bench \
            --outbound "127.0.0.1:$P_PORT" --inbound "127.0.0.1:$(free_port)" \
            --admin "127.0.0.1:$admin" --workers 1
        P_PID=$BG_PID
    else
        {
            envoy_bootstrap_head "$admin" "$P_PORT"
            cat <<EOF
              routes:
              - match: {prefix: "/"}
                route:
                  cluster: $AUTHORITY
EOF
            envoy_route "$key"
            cat <<EOF
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: $AUTHORITY
    type: STATIC
    connect_timeout: 1s
    lb_policy: $(envoy_lb "$key")
EOF
            envoy_cluster "$key"
            cat <<EOF
    load_assignment:
      cluster_name: $AUTHORITY
      endpoints:
      - lb_endpoints:
EOF
            for i in 1 2 3; do
                echo "        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: ${APP_PORTS[$((i - 1))]}}}}"
            done
        } >"$dir/envoy.yaml"
        start_bg "$P_LOG" "$ENVOY" -c "$dir/envoy.yaml" --concurrency 1 --disable-hot-restart -l warning
        P_PID=$BG_PID
    fi
    wait_200 "$proxy" "$P_PID" "$P_LOG" "http://127.0.0.1:$admin/ready" || return 1
    wait_200 "$proxy (through)" "$P_PID" "$P_LOG" "http://127.0.0.1:$P_PORT/" -H "Host: $AUTHORITY" || return 1
}

# ------------------------------------------------------------------------------ one run
sample_lines() { # FILE: counter lines the sampler wrote so far
    local n
    n=$(grep -vc '^#' "$1" 2>/dev/null) || true
    echo "${n:-0}"
}

NOT_ENFORCED=() NOT_ENFORCED_EXAMPLE=""
# run_row ROUND SCENARIO ROW PROXY KEY FAULTS: one measured run, its figures recorded
run_row() {
    local round=$1 scenario=$2 row=$3 proxy=$4 key=$5 faults=$6
    local tag="round $round/$ROUNDS $scenario: $row"
    local dir=$WORK/$scenario-$row-r$round rate=$RATE conns=$CONNS secs=$DURATION
    local target=app3 w_from=- w_to=- events=() i
    case "$scenario" in
        bad)
            secs=$BAD_LONG
            w_from=$(awk -v m="$BAD_FROM_MS" 'BEGIN { print m / 1000 }')
            w_to=$(awk -v a="$BAD_FROM_MS" -v b="$BAD_FOR_MS" 'BEGIN { print (a + b) / 1000 }')
            events+=("at:$w_from:POST:$(app_url 3)/_weft/fault?biz_error_share=$BIZ_SHARE&for=${BAD_FOR_MS}ms")
            ;;
        outage)
            secs=$LONG rate=$OUTAGE_RATE conns=$OUTAGE_CONNS
            w_from=$(awk -v m="$OUTAGE_FROM_MS" 'BEGIN { print m / 1000 }')
            w_to=$(awk -v a="$OUTAGE_FROM_MS" -v b="$OUTAGE_FOR_MS" 'BEGIN { print (a + b) / 1000 }')
            for i in 1 2 3; do
                events+=("at:$w_from:POST:$(app_url "$i")/_weft/fault?latency=$OUTAGE_LATENCY&for=${OUTAGE_FOR_MS}ms")
            done
            ;;
    esac
    faults_for "$faults"
    if ! start_proxy "$proxy" "$key" "$dir"; then
        note "$scenario $row: $proxy could not be started in round $round, skipped (logs in the kept work dir)"
        KEEP=1
        [[ -n "$P_PID" ]] && stop_pid "$P_PID"
        return 0
    fi
    local url=http://127.0.0.1:$P_PORT/
    local -a load=(--rate "$rate" -c "$conns" --threads 1 --timeout 5s -H "Host: $AUTHORITY" -q)
    # warm-up: connections, pools, the balancer's latency estimates; not measured
    taskset -c "$LOAD_CPU" "$WEFT" load "$url" "${load[@]}" -d "${WARMUP}s" --warmup 0s \
        >/dev/null 2>"$dir/warmup.err" || log "$tag: warm-up failed: $(tail -n 3 "$dir/warmup.err")"
    local -a apps=()
    for i in 1 2 3; do apps+=("app:app$i:$(app_url "$i")"); done
    BG_CPU=$LOAD_CPU start_bg "$dir/sampler.log" python3 "$WORK/sampler.py" "$dir/samples.tsv" \
        "$SAMPLE_S" "${apps[@]}" "${events[@]+"${events[@]}"}"
    local sampler=$BG_PID
    # its first read of every app must come before the first request
    for ((i = 0; i < 100; i++)); do
        (($(sample_lines "$dir/samples.tsv") >= 3)) && break
        alive "$sampler" || break
        sleep 0.05
    done
    if (($(sample_lines "$dir/samples.tsv") < 3)); then
        log "$tag: the counter sampler did not start: $(tail -n 3 "$dir/sampler.log" "$dir/samples.tsv" 2>/dev/null)"
        note "$scenario $row: the counter sampler did not start in round $round, skipped"
        KEEP=1
        stop_pid "$sampler"
        stop_pid "$P_PID"
        return 0
    fi
    if ! taskset -c "$LOAD_CPU" "$WEFT" load "$url" "${load[@]}" -d "${secs}s" --warmup 0s --json \
        >"$dir/load.json" 2>"$dir/load.err"; then
        log "$tag: weft load failed: $(tail -n 5 "$dir/load.err")"
        note "$scenario $row: weft load failed in round $round"
        KEEP=1
        stop_pid "$sampler"
        stop_pid "$P_PID"
        return 0
    fi
    sleep 0.3   # backup requests still in flight reach the apps' counters
    stop_pid "$sampler"
    if grep -q "not enforce" "$P_LOG" 2>/dev/null; then
        NOT_ENFORCED+=("$scenario/$row")
        [[ -n $NOT_ENFORCED_EXAMPLE ]] ||
            NOT_ENFORCED_EXAMPLE=$(grep -m1 -o 'TrafficPolicy .*not enforce[^"]*' "$P_LOG" | cut -c1-240)
    fi
    stop_pid "$P_PID"
    local line k v msg="$tag:"
    while IFS= read -r line; do
        k=${line%%=*} v=${line#*=}
        record "$round" "$scenario" "$row" "$k" "$v"
    done < <(python3 "$WORK/analyze.py" "$dir/load.json" "$dir/samples.tsv" "$target" "$w_from" "$w_to" "$rate")
    msg+=" $(python3 - "$RESULTS" "$round" "$scenario" "$row" <<'PY'
import sys
res, rnd, sc, row = sys.argv[1:]
v = {}
for line in open(res):
    r, s, w, m, x = line.rstrip("\n").split("\t")
    if (r, s, w) == (rnd, sc, row):
        v[m] = x
keys = ["p50", "p99", "p999", "target_share_pct", "extra_pct", "success_pct", "share_halved_s", "p99_during_max", "recovered_s", "errors"]
print(" ".join(f"{k}={v[k]}" for k in keys if k in v))
PY
)"
    log "$msg"
    grep -q '^saturated=1' <(awk -F'\t' -v r="$round" -v s="$scenario" -v w="$row" \
        '$1 == r && $2 == s && $3 == w { print $4 "=" $5 }' "$RESULTS") &&
        note "$scenario $row: weft load reports itself saturated in round $round"
    return 0
}

# ------------------------------------------------------------------------------ scenarios
rows_of() { # SCENARIO: its rows, one a line: ROW PROXY KEY FAULTS
    case "$1" in
        slow) printf '%s\n' \
            "weft-healthy weft none healthy" "envoy-healthy envoy rr healthy" \
            "weft-rr weft rr slow" "weft-lr weft lr slow" "weft-la weft la slow" \
            "envoy-rr envoy rr slow" "envoy-lr envoy lr slow" ;;
        bad) printf '%s\n' \
            "weft-none weft none healthy" "weft-retry weft biz healthy" "envoy-retry envoy biz healthy" ;;
        tail) printf '%s\n' \
            "weft-none weft none tail" "weft-fixed weft hedge-fixed tail" "weft-p95 weft hedge-p95 tail" \
            "envoy-none envoy rr tail" "envoy-hedge envoy hedge-fixed tail" ;;
        outage) printf '%s\n' "weft-hedge weft outage healthy" "envoy-hedge envoy outage healthy" ;;
    esac
}

run_scenario() { # ROUND SCENARIO
    local -a rows=()
    local r row proxy key faults
    mapfile -t rows < <(rows_of "$2")
    for r in "${rows[@]}"; do
        read -r row proxy key faults <<<"$r"
        has_proxy "$proxy" || continue
        run_row "$1" "$2" "$row" "$proxy" "$key" "$faults"
    done
}

count_rows() { # SCENARIO: how many of its rows run
    local r n=0
    while read -r r; do
        if has_proxy "$(awk '{print $2}' <<<"$r")"; then n=$((n + 1)); fi
    done < <(rows_of "$1")
    echo "$n"
}

# ------------------------------------------------------------------------------ run
write_helpers
TS=$(date +%Y%m%d-%H%M%S)
# the source the binary was built from, read now: others may commit during the run
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' (with uncommitted changes under crates/)')"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
awk '$1 > 0.5 { exit 1 }' /proc/loadavg ||
    log "WARNING: load average $LOAD_BEFORE: other work on this machine will skew the numbers"
start_apps

per_round=0
for s in "${SCENARIO_LIST[@]}"; do
    d=$DURATION
    [[ $s == outage ]] && d=$LONG
    [[ $s == bad ]] && d=$BAD_LONG
    per_round=$((per_round + $(count_rows "$s") * (d + WARMUP + 3)))
done
est=$((ROUNDS * per_round))
log "$ROUNDS round(s) of [${SCENARIO_LIST[*]}] through [${PROXY_LIST[*]}], ${DURATION} s runs (bad, outage: ${LONG} s): about $((est / 60)) min $((est % 60)) s"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for s in "${SCENARIO_LIST[@]}"; do
        run_scenario "$ROUND" "$s"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
if ((${#NOT_ENFORCED[@]})); then
    note "the weft proxy warned that it does not enforce a loaded TrafficPolicy (or part of it) yet, in: $(printf '%s\n' "${NOT_ENFORCED[@]}" | sort -u | tr '\n' ' ')(e.g. \"$NOT_ENFORCED_EXAMPLE\"); those rows show what it does today"
fi

# ------------------------------------------------------------------------------ report
mkdir -p "$WEFT_ROOT/target/bench"
OUT=$WEFT_ROOT/target/bench/policy-$TS.md
cp "$RESULTS" "$WEFT_ROOT/target/bench/policy-$TS.tsv"
{
    echo "# weft policy scenarios $TS"
    echo
    echo "\`$CMDLINE\`"
    echo
    echo "- commit $COMMIT at the start, $(uname -sr), $(nproc) CPUs: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    [[ -z "${WEFT_BIN:-}" ]] || echo "- weft binary: $WEFT_BIN"
    if has_proxy envoy; then
        echo "- envoy $("$ENVOY" --version 2>/dev/null | grep -oE '/[0-9]+\.[0-9]+\.[0-9]+/' | tr -d / | head -1), --concurrency 1; weft proxy --workers 1"
    fi
    echo "- $ROUNDS round(s), interleaved; medians across rounds. Runs: ${DURATION} s (bad, outage: ${LONG} s) after a ${WARMUP} s warm-up"
    echo "- 3 \`weft app\` endpoints (1 ms unless the scenario says otherwise); client \`weft load --rate $RATE -c $CONNS --threads 1\` (outage: --rate $OUTAGE_RATE -c $OUTAGE_CONNS), HTTP/1.1, open loop, latency from the intended send time"
    echo "- pinning: apps + proxy on CPU $PROXY_CPU, load tool + counter sampler on CPU $LOAD_CPU"
    echo "- load average at start: $LOAD_BEFORE; at end: $LOAD_AFTER"
    echo
    python3 - "$RESULTS" "$BAD_FROM_MS" "$BAD_FOR_MS" "$OUTAGE_FROM_MS" "$OUTAGE_FOR_MS" "$SAMPLE_S" \
        "$BUDGET_PCT" "$BUDGET_MIN_PER_S" "$OUTAGE_RATE" "$HEDGE_DELAY_MS" "$OUTAGE_HEDGE_MS" <<'PY'
import collections, statistics, sys

(res, bad_from, bad_for, out_from, out_for, sample_s, budget_pct, budget_min, out_rate,
 hedge_ms, out_hedge_ms) = sys.argv[1:]
rows = collections.defaultdict(lambda: collections.defaultdict(dict))  # (scenario,row) -> metric -> round -> v
order = collections.defaultdict(list)
for line in open(res):
    rnd, sc, row, m, v = line.rstrip("\n").split("\t")
    if row not in order[sc]:
        order[sc].append(row)
    rows[(sc, row)][m][int(rnd)] = v

def med(sc, row, m):
    vals = [float(v) for v in rows[(sc, row)].get(m, {}).values()]
    return statistics.median(vals) if vals else None

def last(sc, row, m):
    r = rows[(sc, row)].get(m, {})
    return r[max(r)] if r else None

def fmt(v, nd=1, suffix=""):
    return "–" if v is None else f"{v:,.{nd}f}{suffix}"

LABELS = {
    "slow": {
        "weft-healthy": ("weft", "no policy (its default balancer)", "all healthy"),
        "envoy-healthy": ("envoy", "ROUND_ROBIN", "all healthy"),
        "weft-rr": ("weft", "RoundRobin", "one at 10 ms"),
        "weft-lr": ("weft", "LeastRequest", "one at 10 ms"),
        "weft-la": ("weft", "LatencyAware", "one at 10 ms"),
        "envoy-rr": ("envoy", "ROUND_ROBIN", "one at 10 ms"),
        "envoy-lr": ("envoy", "LEAST_REQUEST", "one at 10 ms"),
    },
    "bad": {
        "weft-none": ("weft", "no policy"),
        "weft-retry": ("weft", "failureCodes.header x-biz-code 5003 + retry {maxRetries: 2}"),
        "envoy-retry": ("envoy", "retry_on retriable-headers x-biz-code 5003, 2 retries, previous_hosts"),
    },
    "tail": {
        "weft-none": ("weft", "no policy (no hedging)"),
        "weft-fixed": ("weft", f"hedging {{delay: {hedge_ms}ms, maxAttempts: 2}}"),
        "weft-p95": ("weft", "hedging {percentile: 95, maxAttempts: 2}"),
        "envoy-none": ("envoy", "no hedging"),
        "envoy-hedge": ("envoy", f"hedge_on_per_try_timeout, per_try_timeout {hedge_ms} ms, 1 retry"),
    },
    "outage": {
        "weft-hedge": ("weft", f"hedging {{delay: {out_hedge_ms}ms}} + retry {{maxRetries: 2}} + budget {{percent: {budget_pct}, minPerSecond: {budget_min}}}"),
        "envoy-hedge": ("envoy", f"hedge on a {out_hedge_ms} ms per-try timeout, 1 retry, retry_budget {budget_pct}%"),
    },
}

def never(v):
    return "never" if v is not None and v < 0 else fmt(v, 1, " s")

def errors(sc, row):
    e = med(sc, row, "errors")
    return fmt(e, 0)

if order["slow"]:
    print("### 1. Slow endpoint: one of three answers in 10 ms, the others in 1 ms\n")
    print("| proxy | balancer | endpoints | p50 ms | p99 ms | p99.9 ms | requests to the slow one | errors |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for row in order["slow"]:
        proxy, lb, eps = LABELS["slow"].get(row, (row, "", ""))
        share = med("slow", row, "target_share_pct") if "healthy" not in row else None
        print(f"| {proxy} | {lb} | {eps} | {fmt(med('slow', row, 'p50'), 2)} | {fmt(med('slow', row, 'p99'), 2)} "
              f"| {fmt(med('slow', row, 'p999'), 2)} | {fmt(share, 1, '%')} | {errors('slow', row)} |")
    print("\nRound robin sends the slow endpoint a third; a balancer that sees latency or queueing sends it less.\n")

if order["bad"]:
    f0, f1 = float(bad_from) / 1000, (float(bad_from) + float(bad_for)) / 1000
    print(f"### 2. Bad endpoint: one of three answers 50% of requests `x-biz-code: 5003` (HTTP 200) from {f0:g} s to {f1:g} s\n")
    print("| proxy | policy | client success | during the fault | failed attempts | bad endpoint's share before / during / after | share halved after | back to half its share after the fault | share, last 5 s | extra requests | p99 ms |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for row in order["bad"]:
        proxy, pol = LABELS["bad"].get(row, (row, ""))
        print(f"| {proxy} | {pol} | {fmt(med('bad', row, 'success_pct'), 2, '%')} | {fmt(med('bad', row, 'success_during_pct'), 2, '%')} "
              f"| {fmt(med('bad', row, 'failed_attempts'), 0)} "
              f"| {fmt(med('bad', row, 'share_before_pct'), 1, '%')} / {fmt(med('bad', row, 'share_during_pct'), 1, '%')} / {fmt(med('bad', row, 'share_after_pct'), 1, '%')} "
              f"| {never(med('bad', row, 'share_halved_s'))} | {never(med('bad', row, 'share_back_s'))} | {fmt(med('bad', row, 'share_end_pct'), 1, '%')} "
              f"| {fmt(med('bad', row, 'extra_pct'), 1, '%')} | {fmt(med('bad', row, 'p99'), 2)} |")
    print(f"\nClient success: responses without the business code (nor an error) over all requests; the "
          f"failures that reached the client are the failed attempts minus the extra attempts (each retry "
          f"follows one failed attempt). \"During the fault\": the same failures over the requests sent "
          f"while it was on. Share halved: the first {sample_s} s sample after the fault started in which "
          f"the bad endpoint got less than half its share before it; back: the first sample after the fault "
          f"in which it got at least half of it again (\"never\": not within the run; see --bad-after).\n")
    print(f"Bad endpoint's share of requests, per {sample_s} s (last round; the fault covers {f0:g}-{f1:g} s):\n")
    print("| proxy | policy | share % per sample |")
    print("|---|---|---|")
    for row in order["bad"]:
        proxy, pol = LABELS["bad"].get(row, (row, ""))
        tl = last("bad", row, "share_timeline")
        print(f"| {proxy} | {pol} | {tl.replace(',', ' ') if tl else '–'} |")
    print()

if order["tail"]:
    print("### 3. Long tail: every endpoint answers 2% of requests in 100 ms, the rest in 1 ms\n")
    print("| proxy | hedging | p50 ms | p99 ms | p99.9 ms | max ms | extra requests | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in order["tail"]:
        proxy, pol = LABELS["tail"].get(row, (row, ""))
        print(f"| {proxy} | {pol} | {fmt(med('tail', row, 'p50'), 2)} | {fmt(med('tail', row, 'p99'), 2)} "
              f"| {fmt(med('tail', row, 'p999'), 2)} | {fmt(med('tail', row, 'max'), 1)} "
              f"| {fmt(med('tail', row, 'extra_pct'), 1, '%')} | {errors('tail', row)} |")
    print("\nExtra requests: requests the apps received over requests the client sent, minus 1.\n")

if order["outage"]:
    o0, o1 = float(out_from) / 1000, (float(out_from) + float(out_for)) / 1000
    budget = float(budget_pct) + float(budget_min) / float(out_rate) * 100
    print(f"### 4. Outage: every endpoint answers in 200 ms from {o0:g} s to {o1:g} s, then 1 ms again\n")
    print("| proxy | policy | extra requests during the outage | budget | extra, whole run | p99 ms before | worst second's p99 ms | p99 ms after | p99 back within 2x after | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in order["outage"]:
        proxy, pol = LABELS["outage"].get(row, (row, ""))
        print(f"| {proxy} | {pol} | {fmt(med('outage', row, 'extra_during_pct'), 1, '%')} | {budget:.0f}% "
              f"| {fmt(med('outage', row, 'extra_pct'), 1, '%')} | {fmt(med('outage', row, 'p99_before'), 2)} "
              f"| {fmt(med('outage', row, 'p99_during_max'), 1)} | {fmt(med('outage', row, 'p99_after'), 2)} "
              f"| {never(med('outage', row, 'recovered_s'))} | {errors('outage', row)} |")
    print(f"\nBudget: {budget_pct}% of requests plus {budget_min}/s at {out_rate} req/s. p99 before/after: median of the "
          f"per-second p99s (after: from 1 s past the end); recovered: seconds after the end until a second's p99 "
          f"is within 2x (or +2 ms) of before. The latency during the outage includes the wait for one of the "
          f"client's connections. weft's budget counts over a window (10 s): what the traffic before the outage "
          f"earned and did not use is spent first, so the outage's first samples go over the percentage, and once "
          f"the window's allowance is used up no more backups go out (series below); Envoy's retry_budget bounds "
          f"concurrent retries, not a share of requests.\n")
    print(f"Last round, per second: the client's p99 ms; per {sample_s} s: extra requests % (app requests over "
          f"the client's rate, minus 1):\n")
    print("| proxy | series | values |")
    print("|---|---|---|")
    for row in order["outage"]:
        proxy = LABELS["outage"].get(row, (row,))[0]
        for metric, name in (("p99_timeline", "p99 ms / s"), ("extra_timeline", f"extra % / {sample_s} s")):
            tl = last("outage", row, metric)
            print(f"| {proxy} | {name} | {tl.replace(',', ' ') if tl else '–'} |")
    print()
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
