#!/usr/bin/env bash
# Create (or update) the MONAI Label environment in .venv-label: MONAI Label 0.8.5 with torch 2.14.1 + torchvision
# 0.29.1 (MONAI Label's post transforms import torchvision, which does not load beside the torch 2.13 CPU build used
# by .venv), and monai-medt in editable mode. Safe to run again.
#   VENV        where to put the environment (default .venv-label)
# torch/torchvision are pinned on the same pip command line as monailabel, otherwise pip upgrades torch; monailabel
# builds sam2 from source (a few minutes) and pins numpy<2.
set -euo pipefail
exec bash "$(dirname "$0")/make_venv.sh" "${VENV:-.venv-label}" "label,dev" "monailabel torchvision" \
    "torch==2.14.1" "torchvision==0.29.1"
