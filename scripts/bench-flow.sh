#!/usr/bin/env bash
# Issue 6 benchmarks (not part of CI): what the flow-control layers cost at a fixed rate, and
# how close a global rate limit holds with several proxies.
#
#   scripts/bench-flow.sh [--scenario layers,global] [--rounds N] [--rate RPS] [--secs S]
#                         [--limit N] [--no-build]
#
# layers: one `weft proxy --workers 1` (CPU 1) in front of `weft app`, driven by `weft load`
#   (CPU 0) at --rate (default 5000/s) for --secs (default 10) after a 1 s warm-up, with and
#   without scripts/bench-layers-policy.yaml plus a global limit far above the rate (leased
#   from a `weft ratelimit` on CPU 0), rounds interleaved (default 3). Reports p50/p99/p99.9
#   of the load's latency and the proxy's CPU (utime+stime) per request; medians over rounds.
# global: `weft ratelimit` (memory counters) and 3 proxies, each sent --limit/s (default
#   1000/s; together 3x the limit) for --secs (default 30) by its own `weft load`, started at a
#   whole second (the service's windows are unix seconds); admitted (200) vs limit x secs.
#   With redis-server installed, again with two `weft ratelimit --redis` replicas sharing
#   one Redis (proxies split 2:1 between them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

scenarios=layers,global rounds=3 rate=5000 secs= limit=1000 build=1
while (($#)); do
    case "$1" in
        --scenario) scenarios=${2:?}; shift 2 ;;
        --rounds) rounds=${2:?}; shift 2 ;;
        --rate) rate=${2:?}; shift 2 ;;
        --secs) secs=${2:?}; shift 2 ;;
        --limit) limit=${2:?}; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

WORK=$(mktemp -d /tmp/weft-bench-flow.XXXXXX) KEEP=0 BG_CPU=1
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
WEFT=$ROOT/target/release/weft
if ((build)); then
    log "building weft (release)"
    (cd "$ROOT" && cargo build --release -q -p weft)
fi
[[ -x $WEFT ]] || die "no $WEFT (drop --no-build)"
REPORT=$ROOT/target/bench/flow-$(date +%Y%m%d-%H%M%S).md
mkdir -p "$(dirname "$REPORT")"
say() { printf '%s\n' "$*" | tee -a "$REPORT"; }


service_yaml() { # NAME PORT
    printf 'apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: %s}\nspec:\n  ports: [{port: 8080, protocol: http}]\n  endpoints: [{address: "127.0.0.1:%s"}]\n' "$1" "$2"
}
global_yaml() { # LIMIT
    printf 'apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: shared}\nspec:\n  targetRefs: [{kind: Service, name: upstream}]\n  rateLimit: {global: {requestsPerUnit: %s, unit: second}}\n' "$1"
}


APP_PORT=$(free_port)
start_bg "$WORK/app.log" "$WEFT" app --listen "127.0.0.1:$APP_PORT" --name up
sleep 0.3

# ---------------------------------------------------------------- layers
layers() {
    local cfg_off=$WORK/off cfg_on=$WORK/on rls_port rls_admin
    mkdir -p "$cfg_off" "$cfg_on"
    service_yaml upstream "$APP_PORT" >"$cfg_off/u.yaml"
    cp "$cfg_off/u.yaml" "$cfg_on/u.yaml"
    # The layers policy plus a global limit far above the offered rate.
    sed 's/rateLimit: *{local: *{\(.*\)}}/rateLimit: {local: {\1}, global: {requestsPerUnit: 100000000}}/' \
        "$ROOT/scripts/bench-layers-policy.yaml" >"$cfg_on/policy.yaml"
    grep -q global "$cfg_on/policy.yaml" || die "bench-layers-policy.yaml: no rateLimit.local to extend"
    rls_port=$(free_port) rls_admin=$(free_port)
    BG_CPU=0 start_bg "$WORK/rls.log" "$WEFT" ratelimit --config "$cfg_on" \
        --listen "127.0.0.1:$rls_port" --admin "127.0.0.1:$rls_admin"
    local rls_pid=$BG_PID
    wait_ready "127.0.0.1:$rls_admin"
    say ""
    say "## Policy layers at a fixed rate ($rate req/s, ${secs:-10} s, $rounds rounds, HTTP/1.1)"
    say ""
    say "| round | layers | p50 ms | p99 ms | p99.9 ms | proxy CPU us/req | errors |"
    say "|---|---|---|---|---|---|---|"
    local r which
    for ((r = 1; r <= rounds; r++)); do
        for which in off on; do
            fixed_rate_run "$which" "$WEFT" "$WORK/$which" "$rate" "${secs:-10}" "$WORK/layers.txt" \
                --ratelimit "127.0.0.1:$rls_port"
            say "$(last_row "$WORK/layers.txt" "$r")"
        done
    done
    stop_pid "$rls_pid"
    say ""
    say "| layers | median p50 ms | median p99 ms | median p99.9 ms | median CPU us/req |"
    say "|---|---|---|---|---|"
    while read -r row; do say "$row"; done < <(median_rows "$WORK/layers.txt" off on)
}

# ---------------------------------------------------------------- global
global_run() { # LABEL RLS_ADDR_1 RLS_ADDR_2 (proxies 1,2 use the first, 3 the second)
    local label=$1 i s=${secs:-30} cfg=$WORK/global
    local -a pids=() outs=() ports=() loads=()
    for i in 1 2 3; do
        local port admin rls=$2
        ((i == 3)) && rls=$3
        port=$(free_port) admin=$(free_port)
        start_bg "$WORK/gproxy-$label-$i.log" "$WEFT" proxy --config "$cfg" --service "caller$i" \
            --outbound "127.0.0.1:$port" --inbound "127.0.0.1:$(free_port)" \
            --admin "127.0.0.1:$admin" --workers 1 --ratelimit "$rls"
        pids+=("$BG_PID") ports+=("$port")
        wait_ready "127.0.0.1:$admin"
    done
    # start at a whole second, less the load's 1 s warm-up
    python3 -c 'import time; t=time.time(); time.sleep(1 - (t % 1) + 0.002)'
    for i in 0 1 2; do
        outs+=("$WORK/global-$label-$i.json")
        taskset -c 0 "$WEFT" load -q --json --rate "$limit" -d "${s}s" --warmup 1s -c 16 \
            -H 'Host: upstream' "http://127.0.0.1:${ports[i]}/" >"${outs[i]}" &
        loads+=("$!")
    done
    wait "${loads[@]}"
    local admitted=0 refused=0 other=0 per=()
    for i in 0 1 2; do
        local ok no
        ok=$(json "${outs[i]}" 'd["status_counts"].get("200", 0)')
        no=$(json "${outs[i]}" 'd["status_counts"].get("429", 0)')
        admitted=$((admitted + ok)) refused=$((refused + no))
        other=$((other + $(json "${outs[i]}" 'd["requests"]') - ok - no))
        per+=("$ok")
    done
    for p in "${pids[@]}"; do stop_pid "$p"; done
    local want=$((limit * s))
    say "| $label | $want | $admitted | $(awk -v a="$admitted" -v w="$want" 'BEGIN {printf "%+.2f%%", (a - w) * 100 / w}') | ${per[*]} | $refused | $other |"
}

global() {
    local cfg=$WORK/global r1 a1 r2 a2
    mkdir -p "$cfg"
    service_yaml upstream "$APP_PORT" >"$cfg/u.yaml"
    global_yaml "$limit" >"$cfg/policy.yaml"
    say ""
    say "## Global limit: 3 proxies at 3x a limit of $limit/s for ${secs:-30} s"
    say ""
    say "| counters | limit x secs | admitted | error | per proxy | refused (429) | other |"
    say "|---|---|---|---|---|---|---|"
    r1=$(free_port) a1=$(free_port)
    BG_CPU=0 start_bg "$WORK/rls1.log" "$WEFT" ratelimit --config "$cfg" \
        --listen "127.0.0.1:$r1" --admin "127.0.0.1:$a1"
    local p1=$BG_PID
    wait_ready "127.0.0.1:$a1"
    global_run memory "127.0.0.1:$r1" "127.0.0.1:$r1"
    stop_pid "$p1"
    if command -v redis-server >/dev/null; then
        local rport
        rport=$(free_port)
        BG_CPU=0 start_bg "$WORK/redis.log" redis-server --port "$rport" --save '' --appendonly no \
            --dir "$WORK"
        sleep 0.3
        r1=$(free_port) a1=$(free_port) r2=$(free_port) a2=$(free_port)
        BG_CPU=0 start_bg "$WORK/rls1r.log" "$WEFT" ratelimit --config "$cfg" \
            --listen "127.0.0.1:$r1" --admin "127.0.0.1:$a1" --redis "redis://127.0.0.1:$rport"
        p1=$BG_PID
        BG_CPU=0 start_bg "$WORK/rls2r.log" "$WEFT" ratelimit --config "$cfg" \
            --listen "127.0.0.1:$r2" --admin "127.0.0.1:$a2" --redis "redis://127.0.0.1:$rport"
        local p2=$BG_PID
        wait_ready "127.0.0.1:$a1"
        wait_ready "127.0.0.1:$a2"
        global_run "redis, 2 replicas" "127.0.0.1:$r1" "127.0.0.1:$r2"
        stop_pid "$p1"
        stop_pid "$p2"
    else
        say "(redis-server not installed: the shared-counter run skipped)"
    fi
}

say "# weft flow-control benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), $(git -C "$ROOT" rev-parse --short HEAD)"
say ""
say "command: scripts/bench-flow.sh --scenario $scenarios --rounds $rounds --rate $rate --limit $limit${secs:+ --secs $secs}"
IFS=, read -ra list <<<"$scenarios"
for s in "${list[@]}"; do
    case "$s" in
        layers) layers ;;
        global) global ;;
        *) die "unknown scenario $s (layers, global)" ;;
    esac
done
log "report: $REPORT"
