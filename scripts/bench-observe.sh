#!/usr/bin/env bash
# Issue 7 benchmark (not part of CI): what metrics, tracing and access logs cost at a fixed
# rate, the way a user runs them.
#
#   scripts/bench-observe.sh [--rounds N] [--rate RPS] [--secs S] [--old WEFT]
#                            [--configs base,log100,...] [--sink-cpu 0|1] [--no-build]
#
# One `weft proxy --workers 1` (CPU 1) in front of `weft app` (CPU 1), driven by `weft load`
# (CPU 0) at --rate (default 5000/s) for --secs (default 10) after a 1 s warm-up; the rounds
# (default 5) interleave the configurations:
#   old        --old WEFT (e.g. the release binary before a change), no flags (skipped without)
#   base       metrics only (always on), no exporter, no access log
#   trace0     --otlp-endpoint SINK --trace-sampling 0     (the exporter, nothing sampled)
#   trace1     --otlp-endpoint SINK --trace-sampling 0.01
#   trace100   --otlp-endpoint SINK --trace-sampling 1
#   log1       --access-log FILE --access-log-sampling 0.01
#   log100     --access-log FILE                           (every request, all fields)
# SINK is a real OTLP/gRPC receiver (weft-test-support's otlp_sink example, which counts and
# drops spans) on --sink-cpu (default 0, beside the load generator; 1 puts it beside the proxy:
# neither is free, see BENCHMARKS.md). Reports
# per round p50/p99/p99.9 of the load's latency and the proxy's CPU (utime+stime, its access
# log writer thread included) per request, then medians over rounds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

rounds=5 rate=5000 secs=10 old='' build=1 only='' sink_cpu=0
while (($#)); do
    case "$1" in
        --rounds) rounds=${2:?}; shift 2 ;;
        --rate) rate=${2:?}; shift 2 ;;
        --secs) secs=${2:?}; shift 2 ;;
        --old) old=${2:?}; shift 2 ;;
        --configs) only=${2:?}; shift 2 ;;
        --sink-cpu) sink_cpu=${2:?}; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

WORK=$(mktemp -d /tmp/weft-bench-observe.XXXXXX) KEEP=0 BG_CPU=1
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
WEFT=$ROOT/target/release/weft
SINK_BIN=$ROOT/target/release/examples/otlp_sink
if ((build)); then
    log "building weft and the OTLP sink (release)"
    (cd "$ROOT" && cargo build --release -q -p weft && cargo build --release -q -p weft-test-support --example otlp_sink)
fi
[[ -x $WEFT && -x $SINK_BIN ]] || die "no $WEFT or $SINK_BIN (drop --no-build)"
[[ -z $old || -x $old ]] || die "--old $old is not an executable"
REPORT=$ROOT/target/bench/observe-$(date +%Y%m%d-%H%M%S).md
mkdir -p "$(dirname "$REPORT")"
say() { printf '%s\n' "$*" | tee -a "$REPORT"; }


APP_PORT=$(free_port)
start_bg "$WORK/app.log" "$WEFT" app --listen "127.0.0.1:$APP_PORT" --name up
mkdir -p "$WORK/cfg"
printf 'apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: upstream}\nspec:\n  ports: [{port: 8080, protocol: http}]\n  endpoints: [{address: "127.0.0.1:%s"}]\n' \
    "$APP_PORT" >"$WORK/cfg/u.yaml"
BG_CPU=$sink_cpu start_bg "$WORK/sink.log" nice -n 19 "$SINK_BIN"
SINK_PID=$BG_PID
for ((i = 0; i < 50; i++)); do
    SINK=$(head -1 "$WORK/sink.log" 2>/dev/null || true)
    [[ $SINK == *:* ]] && break
    sleep 0.1
done
[[ $SINK == *:* ]] || die "the OTLP sink printed no address"

configs=(base trace0 trace1 trace100 log1 log100)
[[ -n $old ]] && configs=(old "${configs[@]}")
if [[ -n $only ]]; then
    IFS=, read -r -a configs <<<"$only"
    for c in "${configs[@]}"; do
        [[ " old base trace0 trace1 trace100 log1 log100 " == *" $c "* ]] || die "--configs: unknown configuration $c"
        [[ $c != old || -n $old ]] || die "--configs old needs --old WEFT"
    done
fi
flags() { # CONFIG
    case "$1" in
        old|base) ;;
        trace0) echo "--otlp-endpoint $SINK --trace-sampling 0" ;;
        trace1) echo "--otlp-endpoint $SINK --trace-sampling 0.01" ;;
        trace100) echo "--otlp-endpoint $SINK --trace-sampling 1" ;;
        log1) echo "--access-log $WORK/access-log1.log --access-log-sampling 0.01" ;;
        log100) echo "--access-log $WORK/access-log100.log" ;;
    esac
}

say "## Metrics, tracing and access logs at a fixed rate ($rate req/s, $secs s, $rounds rounds, HTTP/1.1)"
say ""
say "weft $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo ' (+ uncommitted changes)')${old:+, old = $old}; OTLP sink on CPU $sink_cpu; $(date -u +%Y-%m-%dT%H:%MZ)"
say ""
say "| round | config | p50 ms | p99 ms | p99.9 ms | proxy CPU us/req | errors |"
say "|---|---|---|---|---|---|---|"
for ((r = 1; r <= rounds; r++)); do
    for c in "${configs[@]}"; do
        bin=$WEFT
        [[ $c == old ]] && bin=$old
        # shellcheck disable=SC2046 # the flags are words
        fixed_rate_run "$c" "$bin" "$WORK/cfg" "$rate" "$secs" "$WORK/runs.txt" $(flags "$c")
        say "$(last_row "$WORK/runs.txt" "$r")"
    done
done
say ""
say "| config | median p50 ms | median p99 ms | median p99.9 ms | median CPU us/req |"
say "|---|---|---|---|---|"
while read -r row; do say "$row"; done < <(median_rows "$WORK/runs.txt" "${configs[@]}")
say ""
lines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }
say "access log lines written: 1% $(lines "$WORK/access-log1.log"), 100% $(lines "$WORK/access-log100.log")"
stop_pid "$SINK_PID"
say "spans received by the sink (its last 5-second report): $(grep -o '[0-9]*$' "$WORK/sink.log" | tail -1)"
log "report: $REPORT"
