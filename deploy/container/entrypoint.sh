#!/bin/sh
# The image's entrypoint: `torchrest serve` on $PORT (default 8080; TORCHREST_PORT wins), serving the
# model repository at /mnt/models when that folder exists (KServe's storage initializer fills it: a
# folder of model folders, or one model folder), else the built-in default model. Arguments are passed on
# to `torchrest serve`; exec makes the server PID 1, so SIGTERM reaches it and drains.
set -eu
export TORCHREST_PORT="${TORCHREST_PORT:-${PORT:-8080}}"
if [ -z "${TORCHREST_MODEL_REPOSITORY:-}" ] && [ -d /mnt/models ]; then
    export TORCHREST_MODEL_REPOSITORY=/mnt/models
fi
exec torchrest serve "$@"
