#!/usr/bin/env bash
# The one short GPU check (for a lent accelerator): training and inference throughput at 128 and 256, fp32 vs bf16
# autocast, peak memory, and a one-process DDP (NCCL) training epoch of the GlaS bundle. Prints everything; exits
# non-zero on the first failure. Run from the repository root after scripts/setup_env.sh with a CUDA torch.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY -c "import torch; assert torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name(0))"
for amp in none bf16; do
    $PY benchmarks/bench_networks.py --device cuda --amp "$amp" --models MedT GatedAxialUNet UNet --size 128 \
        --batch 32 --warmup 3 --repeats 10 --threads 8
    $PY benchmarks/bench_networks.py --device cuda --amp "$amp" --models MedT --size 256 --batch 8 --warmup 3 \
        --repeats 10 --threads 8
done
$PY benchmarks/bench_networks.py --device cuda --amp bf16 --models MedT --size 128 --batch 32 --warmup 3 \
    --repeats 10 --threads 8 --compile
cd bundles/medt_glas_segmentation
PYTHONPATH=../.. $PY -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=1 -m monai.bundle run \
    --config_file "['configs/train.json','configs/multi_gpu_train.json']" --meta_file configs/metadata.json \
    --logging_file configs/logging.conf --bundle_root "${OUT:-/tmp}/gpu_glas" --max_cases 16 --epochs 1 \
    --val_interval 1 --num_workers 4
