#!/usr/bin/env bash
# Install podman (and what `make image` needs where no registry is reachable) on a Debian machine, as
# root: `deploy/container/setup-podman.sh`. `.ci/run` calls it; run it once before `make image-test`.
#
# Sandboxes such as this project's CI machines lack two things podman's defaults assume, and get a
# containers.conf that says so (written only where it is needed, and only if none exists):
# - crun fails to start containers there: runc is used instead;
# - root lacks CAP_SYS_RESOURCE, so the OCI runtime cannot raise a container's rlimits above the
#   machine's: containers get the machine's own open-files limit and a process limit below it.
set -euo pipefail

missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "== apt-get install ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

conf=/etc/containers/containers.conf
cap_eff=$((16#$(awk '/^CapEff/ {print $2}' /proc/self/status)))
cap_sys_resource=$(((cap_eff >> 24) & 1))
if [[ ! -e "$conf" && "$cap_sys_resource" == 0 ]]; then
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    ((nproc > 32768)) && nproc=32768
    echo "== $conf: runtime runc, ulimits nofile=$nofile nproc=$nproc (no CAP_SYS_RESOURCE here)" >&2
    mkdir -p "$(dirname "$conf")"
    cat >"$conf" <<CONF
# Written by torchrest's deploy/container/setup-podman.sh: this machine's root lacks CAP_SYS_RESOURCE.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
CONF
fi
podman --version
