#!/usr/bin/env bash
# The project's one test command (CI's .ci/run calls exactly this):
#   setup -> cargo fmt --check -> cargo clippy -D warnings -> cargo nextest (or cargo test)
# Integration tests find the tools through WEFT_PYTHON, WEFT_ENVOY and WEFT_PROMETHEUS.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$WEFT_ROOT"

# CI's environment may lack rustup's PATH entry.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found"

total_start=$(date +%s.%N)
timings=()

step() {
    local name=$1
    shift
    log "==> $name: $*"
    local s
    s=$(date +%s.%N)
    local rc=0
    "$@" || rc=$?
    local t
    t=$(elapsed_since "$s")
    timings+=("$(printf '%-8s %8s  %s' "$name" "$t" "$([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)")")")
    if (( rc != 0 )); then
        log "<== $name FAILED (exit $rc) after $t"
        summary
        exit "$rc"
    fi
    log "<== $name ok in $t"
}

summary() {
    log "---- summary (total $(elapsed_since "$total_start")) ----"
    local line
    for line in "${timings[@]}"; do
        log "$line"
    done
}

step setup "$WEFT_ROOT/scripts/setup.sh"

WEFT_PYTHON="$(venv_python)"
WEFT_ENVOY="$(envoy_bin)"
# Debian's prometheus package (scripts/setup.sh) puts it on PATH.
WEFT_PROMETHEUS="${WEFT_PROMETHEUS:-$(command -v prometheus || true)}"
[[ -x "$WEFT_PROMETHEUS" ]] || die "prometheus not found after setup (scripts/setup.sh installs it)"
export WEFT_PYTHON WEFT_ENVOY WEFT_PROMETHEUS
log "WEFT_PYTHON=$WEFT_PYTHON"
log "WEFT_ENVOY=$WEFT_ENVOY"
log "WEFT_PROMETHEUS=$WEFT_PROMETHEUS"

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    step test cargo nextest run --workspace --no-fail-fast
else
    log "cargo-nextest not found: falling back to cargo test"
    step test cargo test --workspace --no-fail-fast
fi

summary
log "all checks passed"
