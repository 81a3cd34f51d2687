#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv: torch, MONAI with its bundle extras, monai-medt in
# editable mode, DICOM-SEG output (highdicom), and the test/export/tracking tools. Safe to run again.
#   TORCH_SPEC  torch requirement to install first (default torch==2.13.0: the CPU build where pip's index or local
#               disk offers it, PyPI's CUDA build on Linux otherwise; a torch already in VENV that satisfies it is
#               kept; on a GPU host use the CUDA build that matches your driver, e.g. TORCH_SPEC="torch==2.14.1").
#   VENV        where to put the environment (default .venv)
set -euo pipefail
exec bash "$(dirname "$0")/make_venv.sh" "${VENV:-.venv}" "bundle,dev,dicom,export,tracking" "" \
    "${TORCH_SPEC:-torch==2.13.0}"
