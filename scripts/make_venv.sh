#!/usr/bin/env bash
# Create (or update) one virtual environment with monai-medt in editable mode; used by setup_env.sh and
# setup_label_env.sh. Safe to run again.
#   make_venv.sh VENV EXTRAS "MODULES" REQUIREMENT...
#     VENV         folder of the environment
#     EXTRAS       monai-medt extras, comma-separated
#     MODULES      modules to import and report besides torch, monai and monai_medt (space-separated, may be "")
#     REQUIREMENT  torch (and torchvision) pins: installed first and alone, then repeated on the line that installs
#                  the extras, so that no later requirement pulls a different (multi-GB) build
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$1 EXTRAS=$2 MODULES=$3
shift 3
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$@"
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]" "$@"
"$VENV/bin/python" - "$VENV" $MODULES <<'PY'
import importlib, sys
names = ["monai_medt", "monai", "torch", *sys.argv[2:]]
versions = [f"{n} {importlib.import_module(n).__version__}" for n in names]
print(sys.argv[1] + ": " + " | ".join(versions))
PY
