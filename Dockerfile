# torchrest's image: `torchrest serve` on 0.0.0.0:8080 (HTTP) and 8081 (gRPC) as a non-root user, serving /mnt/models when that
# folder exists (a model repository, or one model folder: what KServe's storage initializer writes), else
# the built-in default model. Every TORCHREST_* variable and every `torchrest serve` flag still apply.
#
#   podman build -t torchrest:latest .        (make image)
#   podman run --rm -p 8080:8080 torchrest:latest
#
# The CPU image by default. The CUDA image is this file with a CUDA build of torch, whose wheels carry the
# CUDA runtime (the node's driver comes in through the NVIDIA container toolkit):
#   podman build --build-arg TORCH_VARIANT=cu128 --build-arg DEVICE=auto -t torchrest:cuda .   (make image-cuda)
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/torchrest
ENV PATH=/opt/torchrest/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch's build (cpu, or a CUDA one such as cu128) and where it comes from: PyTorch's index for that build
# by default (PyPI's plain torch is the multi-GB CUDA build). With the wheel on disk instead:
# --build-arg TORCH_SOURCE="--find-links /wheels" and that folder as a build volume (deploy/container/build.sh).
ARG TORCH_VARIANT=cpu
ARG TORCH_SOURCE="--index-url https://download.pytorch.org/whl/${TORCH_VARIANT}"
RUN pip install $TORCH_SOURCE "torch==2.13.0+${TORCH_VARIANT}"
# The dependencies in a layer of their own: rebuilt when pyproject.toml changes, not with every source edit.
COPY pyproject.toml /src/
RUN python3 -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['tracing']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY README.md /src/
COPY torchrest /src/torchrest
# pip compiles what it installs, so a read-only root never needs to write bytecode. Then drop what only
# builds C++ extensions or tests torch itself (headers, cmake files, test binaries: ~200 MB).
# The default model's OpenVINO form (torchrest.models.converted) is made here, so that a container starts
# without converting it (its /tmp cache would not outlive the container anyway).
RUN pip install --no-deps /src \
 && python3 -c "from pathlib import Path; from torchrest.models.converted import convert as c; print(c('efficientnet_lite0', Path('/opt/torchrest/cache')))" \
 && pip uninstall -y pip \
 && cd /opt/torchrest/lib/python3.11/site-packages/torch \
 && rm -rf include share/cmake test \
 && find bin -type f ! -name torch_shm_manager -delete

FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
 && useradd --uid 10001 --gid 0 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin torchrest
COPY --from=build /opt/torchrest /opt/torchrest
COPY deploy/container/entrypoint.sh /usr/local/bin/torchrest-entrypoint
# HOME and every cache point at /tmp: the image runs with a read-only root and as any uid (OpenShift).
ARG DEVICE=cpu
ENV PATH=/opt/torchrest/bin:$PATH \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCHREST_CACHE_DIR=/opt/torchrest/cache \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    TORCHREST_GRPC_PORT=8081 \
    TORCHREST_HOST=0.0.0.0 \
    TORCHREST_DEVICE=${DEVICE}
USER 10001
EXPOSE 8080 8081
# SIGTERM drains: the server stops accepting, answers what it admitted (--drain-timeout), exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/torchrest-entrypoint"]
