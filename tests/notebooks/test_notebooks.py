# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Every tutorial notebook runs top to bottom (small settings) and reaches its last cell."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT, require_path, shared_dir

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_exist_and_are_stripped():
    assert [p.name for p in NOTEBOOKS] == [
        "01_network_api.ipynb", "02_train_evaluate_glas.ipynb", "03_ct_slicewise_inference.ipynb"
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and "minute" in nb.cells[0].source  # says what and how long
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    require_path(shared_dir() / "data")
    monkeypatch.setenv("MEDT_NB_EPOCHS", "2")
    monkeypatch.setenv("MEDT_NB_CASES", "8")
    monkeypatch.setenv("MEDT_NB_IMG_SIZE", "64")
    monkeypatch.setenv("MONAI_MEDT_SHARED", str(shared_dir()))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as in Jupyter
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "NOTEBOOK-OK" in outputs
    # every figure a cell draws is shown, as a reader opening the notebook in Jupyter sees it
    for cell in nb.cells:
        if cell.cell_type == "code" and "plt.show()" in cell.source:
            shown = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
            assert shown, f"{path.name}: cell {cell.id} draws a figure but shows none"
