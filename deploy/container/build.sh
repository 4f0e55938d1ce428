#!/usr/bin/env bash
# Build torchrest's image: `deploy/container/build.sh [TAG] [extra build flags...]` (make image).
#
# Works where a registry is reachable (the base image is pulled) and where none is: the base image
# debian:bookworm-slim is then made from Debian's packages with debootstrap and imported. When the CPU
# torch wheel lies in pip's find-links folder ($PIP_FIND_LINKS, a folder), the build takes it from there
# instead of PyTorch's index, and pip inside the build trusts this machine's CA bundle; both come in as
# read-only build volumes, so neither is baked into a layer. ENGINE picks the engine (default: podman).
set -euo pipefail
cd "$(dirname "$0")/../.."

TAG="${1:-torchrest:latest}"
shift || true
BASE="debian:bookworm-slim"
read -r -a engine <<<"${ENGINE:-podman}"

ensure_base_image() {
    if "${engine[@]}" image inspect "$BASE" >/dev/null 2>&1; then
        return
    fi
    echo "== base image $BASE: pulling" >&2
    if "${engine[@]}" pull "$BASE" >/dev/null 2>&1; then
        return
    fi
    echo "== no registry reachable: making $BASE from Debian's packages (debootstrap, ~1 min)" >&2
    command -v debootstrap >/dev/null || { echo "debootstrap is needed: apt-get install debootstrap" >&2; exit 1; }
    local rootfs
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' RETURN
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "${engine[@]}" import --change 'CMD ["bash"]' - "docker.io/library/$BASE" >/dev/null
}

# torch's build: cpu, or a CUDA one (cu128) for the CUDA image
TORCH_VARIANT="${TORCH_VARIANT:-cpu}"
build_flags=(--network host -t "$TAG" --build-arg "TORCH_VARIANT=$TORCH_VARIANT")
if [[ "${engine[0]}" == "podman" ]]; then
    ensure_base_image
    wheels="${PIP_FIND_LINKS:-}"
    if [[ -d "$wheels" ]] && compgen -G "$wheels/torch-2.13.0+$TORCH_VARIANT-*.whl" >/dev/null; then
        echo "== torch from $wheels (build volume)" >&2
        build_flags+=(-v "$wheels:/wheels:ro" --build-arg "TORCH_SOURCE=--find-links /wheels")
    fi
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        pip_conf="$(mktemp -d)/pip.conf"
        printf '[global]\ncert = /etc/ssl/certs/host-ca.crt\n' >"$pip_conf"
        build_flags+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/host-ca.crt:ro -v "$pip_conf:/etc/pip.conf:ro")
    fi
fi
echo "== building $TAG" >&2
started=$(date +%s)
"${engine[@]}" build "${build_flags[@]}" "$@" .
echo "== built $TAG in $(($(date +%s) - started)) s: $("${engine[@]}" image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1/1e9}')" >&2
