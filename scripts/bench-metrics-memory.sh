#!/usr/bin/env bash
# Issue 7 benchmark (not part of CI): what a proxy's memory and metrics grow by per 1,000
# endpoints and per 1,000 Services, weft against Envoy.
#
#   scripts/bench-metrics-memory.sh [--rounds N] [--endpoints LIST] [--services LIST]
#                                   [--churn K] [--no-envoy] [--no-build]
#
# Shapes (N from --endpoints, default 0,1000,5000, and --services, default 0,1000):
#   weft-endpoints  `weft proxy --workers 1 --config DIR`, one Service `upstream` of N endpoints
#   weft-services   the same with N Services `svcI` of 1 endpoint each
#   envoy-endpoints Envoy (--concurrency 1), one STATIC cluster of N endpoints
#   envoy-ep-stats  the same with track_cluster_stats.per_endpoint_stats (Envoy's per-host stats)
#   envoy-services  Envoy, N STATIC clusters of 1 endpoint, one virtual host per cluster
# Endpoints are 127.1.X.Y:9, where nothing listens (a connect is refused at once). Every proxy
# runs pinned to CPU 1. Per case: start it, wait for admin /ready, wait 2 s (weft's 200 ms
# health tick creates the per-endpoint gauges), read RSS (VmRSS) and count the metric lines
# (weft GET /metrics, Envoy GET /stats/prometheus; lines not starting with '#') before any
# traffic, send 20 requests (they fail: 503), wait 0.5 s, then read RSS, the metric lines and
# the text's size, and for Envoy the /stats?format=json entries and /memory's allocated bytes.
# The idle CPU over the 2 s wait is reported too (the health tick walks every endpoint).
# Reports medians over --rounds (default 3) runs and, against the N=0 case of the same shape,
# the growth per 1,000 endpoints or Services. Writes target/bench/metrics-memory-DATE.md, and
# each case's metrics text (round 1) to target/bench/metrics-memory-DATE/.
# Churn (--churn K, default 5; 0 skips): one weft proxy with one Service of 1,000 endpoints
# whose config file is rewritten K times, each time with 1,000 new addresses (a rollout that
# replaces every pod); after each reload (weft_config_generation moved) and 0.5 s, RSS and the
# metric lines: do the series of endpoints that left the config go away?
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

rounds=3 endpoints=0,1000,5000 services=0,1000 churn=5 envoy=1 build=1
while (($#)); do
    case "$1" in
        --rounds) rounds=${2:?}; shift 2 ;;
        --endpoints) endpoints=${2:?}; shift 2 ;;
        --services) services=${2:?}; shift 2 ;;
        --churn) churn=${2:?}; shift 2 ;;
        --no-envoy) envoy=0; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

WORK=$(mktemp -d /tmp/weft-bench-metrics-memory.XXXXXX) KEEP=0 BG_CPU=1
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
WEFT=$ROOT/target/release/weft
if ((build)); then
    log "building weft (release)"
    (cd "$ROOT" && cargo build --release -q -p weft)
fi
[[ -x $WEFT ]] || die "no $WEFT (drop --no-build)"
ENVOY=$(envoy_bin)
if ((envoy)) && [[ ! -x $ENVOY ]]; then
    die "no Envoy at $ENVOY (run scripts/setup.sh, or --no-envoy)"
fi
REPORT=$ROOT/target/bench/metrics-memory-$(date +%Y%m%d-%H%M%S).md
SAMPLES=${REPORT%.md} # one metrics text per case, from round 1
mkdir -p "$SAMPLES"
say() { printf '%s\n' "$*" | tee -a "$REPORT"; }

ep_addr() { # I: the I-th endpoint's address, nothing listening there
    printf '127.1.%d.%d:9' $(($1 / 250)) $(($1 % 250 + 1))
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
metric_lines() { grep -vc '^#' "$1" || true; } # FILE: lines that are not comments / EOF

# ---------------------------------------------------------------- configs
weft_config() { # DIR SHAPE N
    local dir=$1 shape=$2 n=$3 i
    mkdir -p "$dir"
    if [[ $shape == endpoints ]]; then
        {
            printf 'apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: upstream}\n'
            printf 'spec:\n  ports: [{port: 8080, protocol: http}]\n'
            if ((n == 0)); then
                printf '  endpoints: []\n'
            else
                printf '  endpoints:\n'
                for ((i = 0; i < n; i++)); do printf '  - {address: "%s"}\n' "$(ep_addr "$i")"; done
            fi
        } >"$dir/upstream.yaml"
    else
        for ((i = 0; i < n; i++)); do
            printf -- '---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: svc%d}\n' "$i"
            printf 'spec:\n  ports: [{port: 8080, protocol: http}]\n  endpoints: [{address: "%s"}]\n' \
                "$(ep_addr "$i")"
        done >"$dir/services.yaml"
    fi
}

envoy_cluster() { # NAME N_ENDPOINTS FIRST_INDEX PER_ENDPOINT_STATS(0/1)
    local i
    printf '  - name: %s\n    type: STATIC\n    connect_timeout: 1s\n' "$1"
    if (($4)); then printf '    track_cluster_stats: {per_endpoint_stats: true}\n'; fi
    printf '    load_assignment:\n      cluster_name: %s\n' "$1"
    if (($2 == 0)); then
        printf '      endpoints: []\n'
        return
    fi
    printf '      endpoints:\n      - lb_endpoints:\n'
    for ((i = $3; i < $3 + $2; i++)); do
        local a=${ENDPOINT_ADDRS[i]}
        printf '        - endpoint: {address: {socket_address: {address: %s, port_value: 9}}}\n' "${a%:*}"
    done
}

router_filter() { # the listener's http_filters: the router only
    printf '          http_filters:\n          - name: envoy.filters.http.router\n            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}\n'
}

envoy_config() { # FILE SHAPE N ADMIN_PORT LISTEN_PORT
    local f=$1 shape=$2 n=$3 i
    {
        envoy_bootstrap_listener "$4" "$5"
        if [[ $shape == services ]]; then
            # One virtual host per Service, as a sidecar's outbound route table has it.
            for ((i = 0; i < n; i++)); do
                printf '            - {name: svc%d, domains: ["svc%d"], routes: [{match: {prefix: "/"}, route: {cluster: svc%d}}]}\n' \
                    "$i" "$i" "$i"
            done
            printf '            - {name: none, domains: ["*"], routes: [{match: {prefix: "/"}, direct_response: {status: 404}}]}\n'
            router_filter
            printf '  clusters:'
            if ((n == 0)); then printf ' []\n'; else printf '\n'; fi
            for ((i = 0; i < n; i++)); do envoy_cluster "svc$i" 1 "$i" 0; done
        else
            printf '            - {name: upstream, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: upstream}}]}\n'
            router_filter
            printf '  clusters:\n'
            envoy_cluster upstream "$n" 0 "$([[ $shape == ep-stats ]] && echo 1 || echo 0)"
        fi
    } >"$f"
}

# ---------------------------------------------------------------- one run
traffic() { # PORT SHAPE N: 20 requests (4 each to svc0..svc4 for the services shape)
    local port=$1 shape=$2 n=$3 i host
    for ((i = 0; i < 5; i++)); do
        host=upstream
        if [[ $shape == services ]]; then
            host=none
            if ((n > i)); then host=svc$i; fi
        fi
        curl -s --max-time 5 -H "Host: $host" "http://127.0.0.1:$port/?[1-4]" >/dev/null || true
    done
}

BASE_ID=$((($$ % 1000) * 100))
measure() { # PROXY(weft/envoy) SHAPE N ROUND: appends a line to $WORK/results.txt
    local proxy=$1 shape=$2 n=$3 r=$4 admin port cfg pid c0 c1 rss0 lines0 rss lines bytes
    local json=- alloc=- metrics_path
    admin=$(free_port) port=$(free_port) cfg=$WORK/cfg-$proxy-$shape-$n
    if [[ $proxy == weft ]]; then
        [[ -d $cfg ]] || weft_config "$cfg" "$shape" "$n"
        start_bg "$WORK/$proxy-$shape-$n-$r.log" "$WEFT" proxy --config "$cfg" --service bench \
            --outbound "127.0.0.1:$port" --inbound "127.0.0.1:$(free_port)" \
            --admin "127.0.0.1:$admin" --workers 1 --log warn
        metrics_path=/metrics
    else
        envoy_config "$cfg.yaml" "$shape" "$n" "$admin" "$port"
        BASE_ID=$((BASE_ID + 1))
        start_bg "$WORK/$proxy-$shape-$n-$r.log" "$ENVOY" -c "$cfg.yaml" --concurrency 1 \
            --disable-hot-restart --base-id "$BASE_ID" -l warn
        metrics_path=/stats/prometheus
    fi
    pid=$BG_PID
    wait_200 "$proxy $shape $n" "$pid" "$WORK/$proxy-$shape-$n-$r.log" "http://127.0.0.1:$admin/ready" ||
        die "$proxy ($shape, N=$n) did not become ready"
    c0=$(cpu_ticks "$pid")
    sleep 2
    c1=$(cpu_ticks "$pid")
    rss0=$(rss_kib "$pid")
    curl -s --max-time 30 "http://127.0.0.1:$admin$metrics_path" >"$WORK/idle.txt"
    lines0=$(metric_lines "$WORK/idle.txt")
    traffic "$port" "$shape" "$n"
    sleep 0.5
    rss=$(rss_kib "$pid")
    curl -s --max-time 30 "http://127.0.0.1:$admin$metrics_path" >"$WORK/after.txt"
    lines=$(metric_lines "$WORK/after.txt")
    bytes=$(wc -c <"$WORK/after.txt")
    if [[ $proxy == envoy ]]; then
        json=$(curl -s --max-time 30 "http://127.0.0.1:$admin/stats?format=json" |
            python3 -c 'import json,sys; print(len(json.load(sys.stdin)["stats"]))')
        alloc=$(curl -s --max-time 5 "http://127.0.0.1:$admin/memory" |
            python3 -c 'import json,sys; print(int(json.load(sys.stdin)["allocated"]))')
    fi
    # Keep one sample of each case's metrics text for reading.
    if [[ $r == 1 ]]; then
        cp "$WORK/after.txt" "$SAMPLES/$proxy-$shape-$n.txt"
    fi
    stop_pid "$pid"
    printf '%s-%s %s %s %s %s %s %s %s %s %s\n' "$proxy" "$shape" "$n" "$r" "$rss0" "$rss" "$lines0" \
        "$lines" "$bytes" "$json" "$alloc" >>"$WORK/results.txt"
    printf '%s-%s %s cpu %s\n' "$proxy" "$shape" "$n" $((c1 - c0)) >>"$WORK/cpu.txt"
    log "$proxy $shape N=$n round $r: RSS $((rss / 1024)) MiB, $lines metric lines ($lines0 before traffic), $((bytes / 1024)) KiB text"
}

# ---------------------------------------------------------------- churn
churn_config() { # FILE OFFSET: Service `upstream` with endpoints OFFSET..OFFSET+999
    local i
    {
        printf 'apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: upstream}\n'
        printf 'spec:\n  ports: [{port: 8080, protocol: http}]\n  endpoints:\n'
        for ((i = $2; i < $2 + 1000; i++)); do printf '  - {address: "%s"}\n' "$(ep_addr "$i")"; done
    } >"$1.tmp"
    mv "$1.tmp" "$1" # whole files only: the reload must not see half of one
}
generation() { # ADMIN: weft_config_generation
    curl -s --max-time 10 "http://127.0.0.1:$1/metrics" | awk '/^weft_config_generation / {print $2}'
}
churn_run() {
    local cfg=$WORK/churn admin port pid g want now i
    mkdir -p "$cfg"
    churn_config "$cfg/upstream.yaml" 0
    admin=$(free_port) port=$(free_port)
    start_bg "$WORK/churn.log" "$WEFT" proxy --config "$cfg" --service bench \
        --outbound "127.0.0.1:$port" --inbound "127.0.0.1:$(free_port)" \
        --admin "127.0.0.1:$admin" --workers 1 --log warn
    pid=$BG_PID
    wait_200 "weft churn" "$pid" "$WORK/churn.log" "http://127.0.0.1:$admin/ready" || die "weft (churn) did not become ready"
    sleep 1
    say ""
    say "## Endpoint churn: 1 Service of 1,000 endpoints, all replaced $churn times"
    say ""
    say "| config generation | endpoints ever configured | RSS MiB | metric lines | lines per configured endpoint |"
    say "|---|---|---|---|---|"
    for ((i = 0; i <= churn; i++)); do
        if ((i > 0)); then
            want=$(($(generation "$admin") + 1))
            churn_config "$cfg/upstream.yaml" $((i * 1000))
            for ((g = 0; g < 100; g++)); do
                now=$(generation "$admin")
                if ((${now:-0} >= want)); then break; fi
                sleep 0.1
            done
            ((g < 100)) || die "weft (churn) did not reload within 10 s"
            sleep 0.5 # a health tick or two
        fi
        local rss lines
        rss=$(rss_kib "$pid")
        curl -s --max-time 10 "http://127.0.0.1:$admin/metrics" >"$WORK/churn.txt"
        lines=$(metric_lines "$WORK/churn.txt")
        say "| $(awk '/^weft_config_generation / {print $2}' "$WORK/churn.txt") | $(((i + 1) * 1000)) | $(awk -v v="$rss" 'BEGIN {printf "%.1f", v / 1024}') | $lines | $(awk -v l="$lines" 'BEGIN {printf "%.1f", l / 1000}') |"
    done
    stop_pid "$pid"
}

# ---------------------------------------------------------------- cases
IFS=, read -ra EP_LIST <<<"$endpoints"
IFS=, read -ra SVC_LIST <<<"$services"
max=0
for n in "${EP_LIST[@]}" "${SVC_LIST[@]}"; do
    if ((n > max)); then max=$n; fi
done
ENDPOINT_ADDRS=()
for ((i = 0; i < max; i++)); do ENDPOINT_ADDRS+=("$(ep_addr "$i")"); done

CASES=()
for n in "${EP_LIST[@]}"; do CASES+=("weft endpoints $n"); done
for n in "${SVC_LIST[@]}"; do CASES+=("weft services $n"); done
if ((envoy)); then
    for n in "${EP_LIST[@]}"; do CASES+=("envoy endpoints $n"); done
    for n in "${EP_LIST[@]}"; do CASES+=("envoy ep-stats $n"); done
    for n in "${SVC_LIST[@]}"; do CASES+=("envoy services $n"); done
fi

say "# Metrics memory per 1,000 endpoints and Services, $(date -u +%Y-%m-%dT%H:%MZ), $(git -C "$ROOT" rev-parse --short HEAD)"
say ""
say "command: scripts/bench-metrics-memory.sh --rounds $rounds --endpoints $endpoints --services $services --churn $churn$( ((envoy)) || echo ' --no-envoy')"
say ""
say "weft: $("$WEFT" --version 2>/dev/null || echo "$WEFT"); Envoy: $( ((envoy)) && "$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1 || echo -)"
say ""
for ((r = 1; r <= rounds; r++)); do
    for c in "${CASES[@]}"; do
        # shellcheck disable=SC2086 # the case is three words
        measure $c "$r"
    done
done

# ---------------------------------------------------------------- report
col() { # KEY N FIELD: the median of FIELD (1-based in results.txt) over rounds
    awk -v k="$1" -v n="$2" -v f="$3" '$1 == k && $2 == n {print $f}' "$WORK/results.txt" | median
}
say "Medians over $rounds runs. Delta = (value - value at N=0 of the same shape) per 1,000 endpoints"
say "(endpoints shapes) or Services (services shapes). RSS before the 1st scrape: after 2 s idle;"
say "after traffic + scrape: 20 requests and one full scrape later (the scrape's text buffer is"
say "then partly kept by the allocator). Metric lines: /metrics (weft) or /stats/prometheus (Envoy)"
say "lines that are not comments, histogram buckets included."
say ""
say "| case | N | RSS before 1st scrape MiB | delta KiB/1k | RSS after traffic + scrape MiB | delta KiB/1k | Envoy allocated MiB | delta KiB/1k | metric lines (before traffic) | lines per endpoint or Service | metrics text KiB | text bytes per endpoint or Service | Envoy /stats entries | idle CPU % |"
say "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
mib() { awk -v v="$1" 'BEGIN {printf "%.1f", v / 1024}'; } # KiB -> MiB
per() { # VALUE ZERO SCALE: (VALUE - ZERO) * SCALE / N, '-' at N=0 or without an N=0 case
    if ((n == 0)) || [[ -z $2 ]]; then echo -; else
        awk -v v="$1" -v z="$2" -v n="$n" -v s="$3" 'BEGIN {printf "%.1f", (v - z) * s / n}'
    fi
}
for c in "${CASES[@]}"; do
    read -r proxy shape n <<<"$c"
    k=$proxy-$shape
    [[ $(awk -v k="$k" -v n="$n" '$1 == k && $2 == n' "$WORK/results.txt") ]] || continue
    rss0=$(col "$k" "$n" 4) rss0_z=$(col "$k" 0 4) rss=$(col "$k" "$n" 5) lines=$(col "$k" "$n" 7) lines0=$(col "$k" "$n" 6) bytes=$(col "$k" "$n" 8)
    rss_z=$(col "$k" 0 5) lines_z=$(col "$k" 0 7) bytes_z=$(col "$k" 0 8)
    cpu=$(awk -v k="$k" -v n="$n" '$1 == k && $2 == n {print $4}' "$WORK/cpu.txt" | median)
    json=- alloc=- alloc_d=-
    if [[ $proxy == envoy ]]; then
        json=$(col "$k" "$n" 9) alloc=$(col "$k" "$n" 10)
        alloc_z=$(col "$k" 0 10)
    fi
    if [[ $proxy == envoy ]]; then
        alloc_d=$(per "$alloc" "$alloc_z" 0.9765625) # bytes -> KiB per 1,000
        alloc=$(awk -v a="$alloc" 'BEGIN {printf "%.1f", a / 1048576}')
    fi
    say "| $k | $n | $(mib "$rss0") | $(per "$rss0" "$rss0_z" 1000) | $(mib "$rss") | $(per "$rss" "$rss_z" 1000) | $alloc | $alloc_d | $lines ($lines0) | $(per "$lines" "$lines_z" 1) | $(awk -v v="$bytes" 'BEGIN {printf "%.0f", v / 1024}') | $(per "$bytes" "$bytes_z" 1) | $json | $(awk -v t="$cpu" 'BEGIN {printf "%.1f", t / 2}') |"
done
say ""
say "Per-run figures (KEY N ROUND RSS0_KiB RSS_KiB LINES0 LINES BYTES STATS_ENTRIES ALLOCATED):"
say ""
say '```'
sort -k1,1 -k2,2n -k3,3n "$WORK/results.txt" | tee -a "$REPORT" >&2
say '```'
if ((churn > 0)); then
    churn_run
fi
log "report: $REPORT (metrics texts: $SAMPLES/)"
