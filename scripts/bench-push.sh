#!/usr/bin/env bash
# Push benchmark: N simulated delta-ADS sidecars against `weft control` (its own process),
# for N = 100, 1,000 and 10,000 in sequence; a fresh control plane for each N.
#
# usage: scripts/bench-push.sh [options] [-- more push_bench options]
#   --clients LIST    comma list of client counts (default 100,1000,10000)
#   --repeats N       times each change is made; medians are reported (default 5)
#   --quick           smoke run: N = 100,1000 with 2 repeats (unless --clients/--repeats are given)
#   --no-build        use the existing release binaries instead of running cargo build
#   -h, --help        this text
#
# The generated mesh: 100 Services in 10 namespaces (2-5 endpoints each, an HTTPRoute with a
# 90/10 split per namespace), every Service declaring its `spec.dependencies`. Service svc-0.ns-0
# (the hub) is called by every other Service, svc-9.ns-9 (the rare one, without sidecars of its
# own) by one. Clients are sidecars of the 99 Services other than the rare one, spread evenly
# (node.cluster NAME.NAMESPACE, user agents alternating envoy / weft), 100 ADS streams per HTTP/2
# connection; each subscribes as Envoy does (wildcard CDS + LDS, then EDS / RDS by the names
# those reference) and ACKs everything.
#
# Changes, alternated and repeated: A = one endpoint added to the hub, B = one endpoint added to
# the rare Service. Per change: file write -> publish (the control plane's
# weft_control_config_last_publish_timestamp_seconds; includes the 50 ms reload poll) and
# publish/write -> each concerned client's ACK of the new version (p50/p99/max over clients);
# control-plane CPU (sum of /proc/PID/task/*/schedstat over the change, minus the idle rate);
# bytes sent (weft_xds_sent_bytes_total delta). Control-plane RSS per connected client =
# (RSS with N clients - RSS before any) / N.
#
# Writes target/bench/push-<timestamp>.md (and prints it).
#
# Environment:
#   WEFT_BIN    weft binary to use (default target/release/weft, built here)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$WEFT_ROOT"

CLIENTS="" REPEATS="" QUICK=0 BUILD=1
EXTRA=()
while (($#)); do
    case "$1" in
        --clients) CLIENTS=$2; shift 2 ;;
        --repeats) REPEATS=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if ((QUICK)); then
    CLIENTS=${CLIENTS:-100,1000} REPEATS=${REPEATS:-2}
fi
CLIENTS=${CLIENTS:-100,1000,10000} REPEATS=${REPEATS:-5}
[[ $CLIENTS =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--clients must be a comma list of positive integers"
[[ $REPEATS =~ ^[1-9][0-9]*$ ]] || die "--repeats must be a positive integer"

WEFT_BIN=${WEFT_BIN:-target/release/weft}
BENCH_BIN=target/release/examples/push_bench
if ((BUILD)); then
    log "building release binaries (weft, push_bench)"
    cargo build --release -p weft --bin weft
    cargo build --release -p weft-control --example push_bench
fi
[[ -x $WEFT_BIN ]] || die "$WEFT_BIN not found (drop --no-build)"
[[ -x $BENCH_BIN ]] || die "$BENCH_BIN not found (drop --no-build)"

# 10,000 streams use ~100 connections; more headroom costs nothing.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p target/bench
ts=$(date +%Y%m%d-%H%M%S)
out="target/bench/push-$ts.md"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    commit="$commit (with uncommitted changes)"
fi
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
{
    echo "# Push benchmark, $(date '+%Y-%m-%d %H:%M')"
    echo
    echo "Command: \`scripts/bench-push.sh --clients $CLIENTS --repeats $REPEATS${EXTRA[*]:+ -- ${EXTRA[*]}}\`"
    echo "Commit: $commit. Machine: $(nproc) CPUs ($cpu_model), $(uname -sr)," \
        "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM," \
        "load average at start $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
} >"$out"

log "running N = $CLIENTS, $REPEATS repeats per change -> $out"
"$BENCH_BIN" --clients "$CLIENTS" --repeats "$REPEATS" --weft "$WEFT_BIN" \
    --work target/bench/push-work --out "$out" "${EXTRA[@]}" >/dev/null
log "report: $out"
cat "$out"
