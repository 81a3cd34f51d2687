#!/usr/bin/env bash
# One lent-GPU session (the device machine: python3 with CUDA torch, no MONAI, no network), ~9.5 minutes:
#   1. GlaS paper-recipe training through the bundle (scripts/glas_cache.py, cache made here by `export`), in
#      parallel until TRAIN_S: MedT fp32 eager, gated axial U-Net, axial U-Net; plus a 2-epoch MedT run with --amp true
#      under torchrun + multi_gpu_train.json (DDP, NCCL, one process).
#   2. Throughput and peak memory (benchmarks/bench_networks.py) at 128 and 256, fp32 vs bf16 autocast.
# Needs in the working tree (git-ignored, carried): .devcache/glas128.pt and .whl/ (monai, pytorch-ignite wheels):
#   .venv/bin/python scripts/glas_cache.py export --dataset_dir ../shared/data/glas --out .devcache/glas128.pt
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl monai==1.6.1 pytorch-ignite==0.5.5
# then the device tool: run `bash benchmarks/gpu_session.sh`, carry [".devcache", ".whl"], timeout_s 600.
# To continue runs, put their checkpoints under .devcache/ and set MEDT_RESUME, GAUNET_RESUME, AUNET_RESUME to them.
# Seen on an H200 (2026-11-28): ~3.5-4.3 s per GlaS epoch for each run (launch-bound), so ~100 epochs per run fit.
# Everything comes back under $OUT: session.txt (this script's log), bench.txt, runs.tgz.* (logs, TensorBoard
# events, best and last checkpoints; split into 15 MiB parts: cat runs.tgz.* | tar xz).
set -u
OUT=${OUT:-/tmp/gpu_out}
TRAIN_S=${TRAIN_S:-380}
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

R=/tmp/runs
mkdir -p $R
train() {  # name, then extra args for glas_cache.py train
    local name=$1; shift
    stamp "start $name"
    timeout "$TRAIN_S" python3 scripts/glas_cache.py train --cache .devcache/glas128.pt --ckpt_dir $R/$name/models \
        --output_dir $R/$name/eval "$@" > $R/$name.log 2>&1
    stamp "end $name rc=$?"
}
resume() { [ -n "${1:-}" ] && echo "--set resume_ckpt=$1"; }
train medt --set amp=false $(resume "${MEDT_RESUME:-}") & pids="$!"
(   # does a compiled training step give eager's gradients on this torch + GPU? (CPU inductor: all zero)
    stamp "start compile_gradients"
    timeout 300 python3 scripts/check_compile_gradients.py --model MedT --size 128 --batch 4 --device cuda \
        > $R/compile_gradients.log 2>&1
    stamp "end compile_gradients rc=$?"
) & pids="$pids $!"
train gated_axial_unet --set amp=false --set network_def#_target_=monai_medt.networks.nets.GatedAxialUNet \
    $(resume "${GAUNET_RESUME:-}") & pids="$pids $!"
train axial_unet --set amp=false --set network_def#_target_=monai_medt.networks.nets.AxialUNet \
    $(resume "${AUNET_RESUME:-}") & pids="$pids $!"
(
    stamp "start ddp_amp"
    timeout 150 python3 -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=1 scripts/glas_cache.py \
        train --multi_gpu --cache .devcache/glas128.pt --ckpt_dir $R/ddp_amp/models --output_dir $R/ddp_amp/eval \
        --set epochs=2 --set val_interval=1 --set amp=true > $R/ddp_amp.log 2>&1
    stamp "end ddp_amp rc=$?"
) & pids="$pids $!"
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
wait $pids  # not a bare wait: bash would also wait for the tee above
for f in $R/*.log; do echo "== $f"; grep -E "Epoch\[[0-9]+\] Complete|best value|Error|error|gradients" "$f" | tail -4; done

# pack: logs, events, best model of every run, last checkpoint while the total stays under ~56 MB
python3 - <<'EOF'
import glob, os, tarfile
R = "/tmp/runs"
files = glob.glob(f"{R}/*.log") + glob.glob(f"{R}/*/eval/*") + glob.glob(f"{R}/*/models/model.pt")
total = sum(os.path.getsize(f) for f in files)
for name in ("medt", "gated_axial_unet", "axial_unet"):
    for ck in glob.glob(f"{R}/{name}/models/checkpoint_epoch=*.pt"):
        if total + os.path.getsize(ck) < 56e6:
            files.append(ck); total += os.path.getsize(ck)
with tarfile.open("/tmp/runs.tgz", "w:gz") as t:
    for f in files:
        t.add(f, arcname=os.path.relpath(f, R))
print("packed", len(files), "files,", round(total / 1e6, 1), "MB")
EOF
split -b 15m /tmp/runs.tgz "$OUT/runs.tgz."
stamp "packed"

B="python3 benchmarks/bench_networks.py --device cuda --threads 2 --warmup 5 --repeats 20"
{
    $B --models MedT --size 128 --batch 4 --peak-gflops 67000
    for amp in none bf16; do
        peak=$([ $amp = none ] && echo 67000 || echo 990000)  # H200 dense fp32 / bf16 datasheet peaks
        $B --amp $amp --models MedT GatedAxialUNet UNet --size 128 --batch 32 --peak-gflops $peak
        $B --amp $amp --models MedT --size 256 --batch 8 --peak-gflops $peak
    done
} 2>&1 | tee "$OUT/bench.txt"
stamp "done"
