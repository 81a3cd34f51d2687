#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv: torch, MONAI with its bundle extras, monai-medt in
# editable mode, DICOM-SEG output (highdicom), and the test/export/tracking tools. Safe to run again.
#   TORCH_SPEC  torch requirement to install first (default torch==2.13.0, the CPU build; on a GPU host use the
#               CUDA build that matches your driver, e.g. TORCH_SPEC="torch==2.14.1").
#   VENV        where to put the environment (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and alone, so that no later requirement pulls a different (multi-GB) build
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
"$VENV/bin/python" -m pip install --quiet -e ".[bundle,dev,dicom,export,tracking]" "$TORCH_SPEC"
"$VENV/bin/python" -c "import torch, monai, monai_medt; print('monai-medt', monai_medt.__version__, '| monai', monai.__version__, '| torch', torch.__version__)"
