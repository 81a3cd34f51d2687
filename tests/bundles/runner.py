# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Run a bundle workflow in a subprocess, as a user would from the bundle folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def run_bundle(bundle: Path, *args: str, root, launcher=None, check=True, timeout=900) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` (or ``launcher ... monai.bundle run``) in ``bundle`` with outputs under ``root``."""
    cmd = (launcher or [sys.executable, "-m"]) + [
        "monai.bundle", "run", "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
        "--bundle_root", str(root), *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
