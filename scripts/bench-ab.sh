#!/usr/bin/env bash
# A/B of two weft binaries' proxy throughput and CPU per request, interleaved
# (machines are noisy: compare within one run). Not part of CI.
#
# usage: scripts/bench-ab.sh OLD_WEFT NEW_WEFT [ROUNDS]
#   NEW_POLICY=FILE: the NEW runs also get FILE (e.g. a TrafficPolicy on Service `upstream`) in
#   their config dir, so one binary against itself measures what a policy's layers cost
#   NEW_ARGS="--flag value ...": extra `weft proxy` arguments for the NEW runs (e.g.
#   NEW_ARGS="--otlp-endpoint 127.0.0.1:4317 --trace-sampling 0.01")
#   e.g. git worktree add /tmp/old <commit>
#        (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p weft)
#        scripts/bench-ab.sh /tmp/old-target/release/weft target/release/weft 2
# Per round and protocol: `weft proxy --workers 1` (one Service, one endpoint, no policy) and
# `weft app` (NEW's) on CPU 1; wrk -t1 -c32 -d5s (h1) / h2load -c32 -m10 -t1 -D 5 (h2c) on
# CPU 0 after a 1 s warm-up; CPU = the proxy's utime+stime during the run. Needs wrk, h2load
# and taskset (scripts/setup.sh --bench).
set -u
OLD=${1:?usage: bench-ab.sh OLD_WEFT NEW_WEFT [ROUNDS]}
NEW=${2:?usage: bench-ab.sh OLD_WEFT NEW_WEFT [ROUNDS]}
ROUNDS=${3:-2}
APP_PORT=47001 PORT=47100
W=$(mktemp -d /tmp/weft-bench-ab.XXXXXX)
taskset -c 1 "$NEW" app --listen "127.0.0.1:$APP_PORT" --name up >/dev/null 2>&1 &
APP=$!
trap 'kill "$APP" 2>/dev/null; rm -rf "$W"' EXIT
sleep 0.5

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # BIN PROTO: prints one result line
    local bin=$1 proto=$2 wproto=http cfg out rps reqs c0 c1 p
    [[ $proto == h2c ]] && wproto=http2
    cfg=$(mktemp -d "$W/cfg.XXXX")
    printf 'apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: upstream}\nspec:\n  ports: [{port: 8080, protocol: %s}]\n  endpoints: [{address: "127.0.0.1:%s"}]\n' \
        "$wproto" "$APP_PORT" >"$cfg/u.yaml"
    local -a extra=()
    if [[ $3 == new && -n ${NEW_POLICY:-} ]]; then
        cp "$NEW_POLICY" "$cfg/policy.yaml"
    fi
    if [[ $3 == new && -n ${NEW_ARGS:-} ]]; then
        read -ra extra <<<"$NEW_ARGS"
    fi
    taskset -c 1 "$bin" proxy --config "$cfg" --service bench --outbound "127.0.0.1:$PORT" \
        --inbound 127.0.0.1:47101 --admin 127.0.0.1:47102 --workers 1 "${extra[@]}" >/dev/null 2>&1 &
    p=$!
    for _ in $(seq 50); do curl -sf http://127.0.0.1:47102/ready >/dev/null && break; sleep 0.1; done
    if [[ $proto == h1 ]]; then
        taskset -c 0 wrk -t1 -c32 -d1s -H 'Host: upstream' "http://127.0.0.1:$PORT/" >/dev/null 2>&1
        c0=$(cpu "$p")
        out=$(taskset -c 0 wrk -t1 -c32 -d5s -H 'Host: upstream' "http://127.0.0.1:$PORT/" 2>&1)
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    else
        taskset -c 0 h2load -c32 -m10 -t1 -D 1 -H ':authority: upstream' "http://127.0.0.1:$PORT/" >/dev/null 2>&1
        c0=$(cpu "$p")
        out=$(taskset -c 0 h2load -c32 -m10 -t1 -D 5 -H ':authority: upstream' "http://127.0.0.1:$PORT/" 2>&1)
        rps=$(awk '/^finished in/ {gsub(",", ""); print $4}' <<<"$out")
        reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
    fi
    c1=$(cpu "$p")
    kill "$p"
    wait "$p" 2>/dev/null
    # clock ticks (10 ms) -> microseconds per request
    awk -v who="$3" -v p="$proto" -v r="$rps" -v q="$reqs" -v c=$((c1 - c0)) \
        'BEGIN { printf "%s %s %.0f req/s  %.2f CPU-us/req\n", who, p, r, c * 10000 / q }'
}

for ((round = 1; round <= ROUNDS; round++)); do
    for proto in h1 h2c; do
        run "$OLD" "$proto" old
        run "$NEW" "$proto" new
    done
done
