# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Copy bundle folders into a MONAI Label model folder, so that training from MONAI Label never writes into the
repository's bundles (MONAI Label's bundle trainer saves ``models/model.pt`` inside the bundle it trains)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence

__all__ = ["stage_bundles"]

logger = logging.getLogger(__name__)

# run outputs and resume checkpoints are not part of a bundle
_IGNORE = shutil.ignore_patterns("eval", "checkpoint_*.pt", "__pycache__", "monailabel_train.json")


def stage_bundles(names: Sequence[str], source_dir: str, model_dir: str) -> dict[str, str]:
    """
    Make ``model_dir/<name>`` for each bundle ``name`` of ``source_dir``: copied on first use, kept afterwards (it
    then holds the weights trained through MONAI Label). The copy is made in a temporary folder and renamed, so an
    interrupted start never leaves half a bundle.

    Args:
        names: bundle folder names, e.g. ``["medt_ct_segmentation"]``.
        source_dir: the folder that holds the bundles (this repository's ``bundles/``).
        model_dir: the MONAI Label app's model folder.

    Returns:
        name -> bundle path in ``model_dir``, in the order given.

    Raises:
        ValueError: a name is not a bundle folder (no ``configs/metadata.json``) in ``source_dir`` or ``model_dir``.
    """
    os.makedirs(model_dir, exist_ok=True)
    staged = {}
    for name in names:
        dst = os.path.join(model_dir, name)
        if not os.path.isfile(os.path.join(dst, "configs", "metadata.json")):
            src = os.path.join(source_dir, name)
            if not os.path.isfile(os.path.join(src, "configs", "metadata.json")):
                available = sorted(os.listdir(source_dir)) if os.path.isdir(source_dir) else "none"
                raise ValueError(
                    f"bundle '{name}' not found: neither {dst} nor {src} has configs/metadata.json "
                    f"(available in {source_dir}: {available})."
                )
            tmp = f"{dst}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, ignore=_IGNORE)
            os.replace(tmp, dst)
            logger.info(f"staged bundle {src} -> {dst}")
        staged[name] = dst
    return staged
