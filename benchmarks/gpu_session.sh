#!/usr/bin/env bash
# One lent-GPU session (the device machine: python3 with CUDA torch, no MONAI, no network), ~7 minutes, the checks
# that issues #3 and #5 still wait for, most needed first:
#   1. Throughput and peak memory (benchmarks/bench_networks.py), the GPU alone: MedT at 128 with batch 4, 32 and 128,
#      eager and with CUDA graphs (--cuda-graphs: the network's forward and backward replayed as graphs; never run
#      before), fp32 and bf16 autocast; MedT at 256 (fp32, bf16); the paper's batch 4 with graphs; the gated U-Net.
#      Each line has its own time limit, so a failing or slow line costs at most that.
#   2. In parallel, after the benchmark: the GlaS bundle's training under torchrun + multi_gpu_train.json (DDP, NCCL,
#      one process) with AMP, 2 epochs with validation (scripts/glas_cache.py, cache made here by `export`); a
#      compiled MedT training step's gradients against eager ones (scripts/check_compile_gradients.py, float64); and
#      MedT's compiled training throughput at batch 32 (bench_networks.py --compile).
# Needs in the working tree (git-ignored, carried): .devcache/glas128.pt and .whl/ (monai, pytorch-ignite wheels):
#   .venv/bin/python scripts/glas_cache.py export --dataset_dir ../shared/data/glas --out .devcache/glas128.pt
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl monai==1.6.1 pytorch-ignite==0.5.5
# then the device tool: run `bash benchmarks/gpu_session.sh`, carry [".devcache", ".whl"], timeout_s 600.
# Seen on an H200 (2026-11-28, the GlaS training runs of the earlier version of this script): MedT eager is bound by
# kernel launches (152 ms per batch-4 train step), ~3.5-4.3 s per GlaS epoch.
# Everything comes back under $OUT: session.txt (this script's log), bench.txt, runs.tgz (logs, TensorBoard events).
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.txt") 2>&1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
grep -m1 "model name" /proc/cpuinfo
python3 -c "import torch, monai, monai_medt
print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name(0))" || exit 1

B="python3 benchmarks/bench_networks.py --device cuda --threads 2 --warmup 3 --repeats 10"
FP32="--peak-gflops 67000"             # H200 dense fp32 datasheet peak
BF16="--amp bf16 --peak-gflops 990000"  # H200 dense bf16 datasheet peak
line() { stamp "bench $*"; timeout 90 $B "$@"; }
{
    line --models MedT --batch 32 $FP32
    line --models MedT --batch 4 $FP32  # eager, launch-bound: 26.4 img/s on 2026-11-28, before the operator cuts
    line --models MedT --batch 32 $FP32 --cuda-graphs
    line --models MedT --batch 32 $BF16
    line --models MedT --batch 32 $BF16 --cuda-graphs
    line --models MedT --batch 128 $FP32 --cuda-graphs
    line --models MedT --batch 128 $BF16 --cuda-graphs
    line --models MedT --size 256 --batch 8 $FP32
    line --models MedT --size 256 --batch 8 $BF16
    line --models MedT --batch 4 $FP32 --cuda-graphs
    line --models GatedAxialUNet --batch 32 $FP32 --cuda-graphs
} 2>&1 | tee "$OUT/bench.txt"

R=/tmp/runs
mkdir -p $R
(
    stamp "start ddp_amp"
    timeout 180 python3 -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=1 scripts/glas_cache.py \
        train --multi_gpu --cache .devcache/glas128.pt --ckpt_dir $R/ddp_amp/models --output_dir $R/ddp_amp/eval \
        --set epochs=2 --set val_interval=1 --set amp=true > $R/ddp_amp.log 2>&1
    stamp "end ddp_amp rc=$?"
) & pids="$!"
(   # does a compiled training step give eager's gradients on this torch + GPU? (float64; the CPU: 5e-11 relative)
    stamp "start compile_gradients"
    timeout 240 python3 scripts/check_compile_gradients.py --model MedT --size 128 --batch 4 --device cuda \
        > $R/compile_gradients.log 2>&1
    stamp "end compile_gradients rc=$?"
) & pids="$pids $!"
(   # torch.compile (inductor) of the whole network, eager loss and Adam: compiled MedT's gradients are right on the CPU
    # since the decoders' upsampling change; the compilation takes ~3.5 min on 2 CPU cores
    stamp "start compiled_bench"
    timeout 240 $B --models MedT --batch 32 $FP32 --compile > $R/compiled_bench.log 2>&1
    stamp "end compiled_bench rc=$?"
) & pids="$pids $!"
wait $pids  # not a bare wait: bash would also wait for the tee above
for f in $R/*.log; do
    echo "== $f"; grep -E "Epoch\[[0-9]+\] Complete|best value|Error|error|gradients|^MedT" "$f" | tail -6
done
tar czf "$OUT/runs.tgz" -C $R --exclude="*.pt" .
stamp "done"
