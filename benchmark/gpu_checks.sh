#!/usr/bin/env bash
# The CUDA checks in one go, for a machine with a GPU (a lent one is short-lived: one call does it all).
#
#   benchmark/gpu_checks.sh OUT_DIR [PART]    PART: all (default), export or engine (one per call, each
#                                             under the device tool's 10 minutes a call)
#
# export:
# 1. tests/test_cuda.py (the served CUDA path, fp16);
# 2. torchrest optimize --device cuda for ResNet-18 (random weights) and its CUDA candidates, all made from
#    one torch.export program: torch-fp16 (eager), aoti (AOTInductor, fp16), torch-compile-cudagraphs
#    (CUDA graphs over batch buckets), tensorrt (dynamo front-end, when torch_tensorrt is installed);
# engine:
# 3. benchmark/frontends.py --device cuda: the engine's front-end sweep (--workers 1, 2, 4, 8, 12) at 100
#    and 256 connections uploading cat.jpg, for ResNet-18 fp16 (random weights) and the near-free model;
# 4. benchmark/ceiling.py --device cuda: the near-free model, torchrest (1 and 8 front-ends) against the
#    naive baseline;
# 5. benchmark/bench.py --quick --device cuda: ResNet-18, torchrest (optimized, eager) against the naive
#    FastAPI baseline on the GPU (the seed's comparison).
# Each step has its own time limit; after each, everything so far (logs, results) is packed into
# OUT_DIR/gpu-checks.tar.gz, so what finished comes back even if a later step does not.
set -u
destination=${1:?usage: benchmark/gpu_checks.sh OUT_DIR [all|export|engine]}
part=${2:-all}
out=$(mktemp -d)
mkdir -p "$destination"
export PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (up to ${limit} s) $(date +%T)"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "=== $name: exit $? $(date +%T)"
    tail -n 25 "$out/$name.log"
    tar czf "$destination/gpu-checks.tar.gz" -C "$out" .  # everything so far, in one file
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))'
repository=$(mktemp -d)
if [ "$part" != engine ]; then
    step test_cuda 90 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
    step optimize 300 python3 -m torchrest optimize --model resnet18 --device cuda --out "$repository" \
        --calibration tests/data --candidates torch-fp16,aoti,torch-compile-cudagraphs,tensorrt \
        --batch-sizes 1,8,32,64 --seconds-per-point 0.5
    cp "$repository"/resnet18/report.* "$out"/ 2>/dev/null
fi
if [ "$part" != export ]; then
    sweep="--device cuda --workers 1,2,4,8,12 --connections 100,256 --rounds 1 --duration 5 --out $out"
    step frontends-resnet18 200 python3 benchmark/frontends.py --model resnet18 $sweep
    step frontends-near-free 200 python3 benchmark/frontends.py --model near-free $sweep
    step ceiling 120 python3 benchmark/ceiling.py --device cuda --duration 5 --workers 1,8 --connections 1,100 --out "$out"
    step bench 120 python3 benchmark/bench.py --quick --device cuda --model resnet18 --repository "$repository" --out "$out"
fi
ls -la "$out"
