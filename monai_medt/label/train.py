# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""MONAI Label training task over a MedT bundle's ``train.json``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monailabel.tasks.train.bundle import BundleTrainTask

__all__ = ["MedTBundleTrainTask"]


class MedTBundleTrainTask(BundleTrainTask):
    """
    ``BundleTrainTask`` with fixed bundle overrides for every run, e.g. ``{"modality": "ct"}`` for the interactive
    bundle (one bundle, one trained model per modality).

    Args:
        path: the bundle folder (a staged copy: training writes ``models/`` there).
        conf: the app's ``--conf`` settings.
        extensions: file name endings of the images this bundle trains on (e.g. ``(".nii.gz", ".nrrd")``).
        overrides: bundle config values set for every training run.
        kwargs: passed to ``BundleTrainTask``.
    """

    def __init__(
        self,
        path: str,
        conf: dict[str, str],
        extensions: Sequence[str],
        overrides: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(path, conf, **kwargs)
        self.extensions = tuple(e.lower() for e in extensions)
        self.fixed_overrides = dict(overrides or {})

    def _fetch_datalist(self, request, datastore):
        # one studies folder may hold volumes and 2D images; each bundle trains on its own kind
        datalist = super()._fetch_datalist(request, datastore)
        kept = [d for d in datalist if str(d["image"]).lower().endswith(self.extensions)]
        if not kept:
            raise ValueError(
                f"no labelled images with extensions {self.extensions} in the datastore "
                f"({len(datalist)} labelled images of other kinds)."
            )
        return kept

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        overrides.update(self.fixed_overrides)
        return overrides
