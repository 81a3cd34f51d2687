# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Shared test fixtures: where the read-only reference data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``$MONAI_MEDT_SHARED`` or the ``shared`` folder beside the repository."""
    return Path(os.environ.get("MONAI_MEDT_SHARED", REPO_ROOT.parent / "shared"))


def require_path(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data not found at {path} (set MONAI_MEDT_SHARED to the shared folder)")
    return path


def count_applies(monkeypatch, function: type[torch.autograd.Function]) -> list:
    """Count the calls of ``function.apply`` while the test runs: the returned list grows by one per call."""
    calls = []
    original = function.apply

    def counting_apply(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(function, "apply", counting_apply)
    return calls


def _bundle_files() -> dict[str, tuple[int, int]]:
    root = REPO_ROOT / "bundles"
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="session", autouse=True)
def _bundles_left_unchanged():
    """Tests write under tmp_path: the repository's bundles (configs, shipped weights) end the session as they began."""
    before = _bundle_files()
    yield
    after = _bundle_files()
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"the tests wrote into bundles/: {changed}"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=["fused", "pytorch"])
def attention_backend(request, monkeypatch):
    """Run a test on the fused CPU attention kernel and on the PyTorch implementation (GPUs, TorchScript)."""
    from monai_medt.networks.blocks.cpu_kernel import KERNEL_ENV, cpu_kernel

    if request.param == "pytorch":
        monkeypatch.setenv(KERNEL_ENV, "0")
    elif os.environ.get(KERNEL_ENV) == "0":
        pytest.skip(f"{KERNEL_ENV}=0 disables the fused CPU kernel")
    else:
        assert cpu_kernel() is not None, "the fused CPU attention kernel did not build (see the warning above)"
    return request.param
