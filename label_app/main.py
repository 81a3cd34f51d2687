# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
MONAI Label app serving the MedT bundles of this repository:

- ``medt_ct_segmentation`` (CT/MR volumes, slice-wise) and ``medt_glas_segmentation`` (H&E images): automatic
  segmentation (/infer) and training (/train) through the bundles' own configs;
- ``medt_click_<modality>`` from ``medt_interactive_segmentation``: click-guided MedT (DeepGrow type) for each
  modality whose weights exist (``models/model_<modality>.pt``);
- ``medt_epistemic``: MC-dropout scoring for active learning, when ``--conf epistemic_model <bundle>`` is given.

Start (no network access at start-up; the bundles are copied from ``../bundles`` into ``model/`` on first start)::

    monailabel start_server --app label_app --studies /path/to/studies --conf models all

``--conf`` keys: ``models`` (comma-separated bundle names or ``all``), ``bundles_dir`` (where the bundles are read,
default ``<app>/../bundles``), ``model_dir`` (the writable copies, default ``<app>/model``), ``epistemic_model``,
``epistemic_dropout`` (0.2), ``epistemic_simulation_size`` (5), ``epistemic_max_samples`` (0 = all),
``preload`` (false).
"""

from __future__ import annotations

import json
import logging
import os

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.scoring.epistemic_v2 import EpistemicScoring
from monailabel.utils.others.generic import strtobool

import monai_medt
from monai_medt.label import stage_bundles
from monai_medt.label.infer import MCDropoutBundleInferTask, MedTBundleInferTask
from monai_medt.label.interactive import MedTClickInferTask
from monai_medt.label.train import MedTBundleTrainTask

logger = logging.getLogger(__name__)

SEGMENTATION_BUNDLES = ("medt_ct_segmentation", "medt_glas_segmentation")
INTERACTIVE_BUNDLE = "medt_interactive_segmentation"
INTERACTIVE_MODALITIES = ("histology", "ct", "mr")
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _dimension(bundle: str) -> int:
    """3 for bundles that take volumes (CT/MR, segmented slice by slice), 2 for 2D images."""
    with open(os.path.join(bundle, "configs", "metadata.json")) as f:
        image = json.load(f)["network_data_format"]["inputs"]["image"]
    return 3 if str(image.get("modality", "")).upper() in ("CT", "MR") else 2


class MyApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        bundles_dir = conf.get("bundles_dir", os.path.join(app_dir, "..", "bundles"))
        self.model_dir = conf.get("model_dir", os.path.join(app_dir, "model"))
        names = conf.get("models", "all")
        names = [*SEGMENTATION_BUNDLES, INTERACTIVE_BUNDLE] if names == "all" else names.split(",")
        self.bundles = stage_bundles([n.strip() for n in names if n.strip()], bundles_dir, self.model_dir)
        self.dimensions = {n: _dimension(p) for n, p in self.bundles.items()}  # read each metadata.json once
        self.epistemic_model = conf.get("epistemic_model", "")
        if self.epistemic_model and self.epistemic_model not in self.bundles:
            raise ValueError(
                f"epistemic_model '{self.epistemic_model}' is not among the served models {list(self.bundles)}."
            )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MONAI Label - MedT",
            description="Medical Transformer (MedT) bundles: automatic and click-guided segmentation, training",
            version=monai_medt.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        preload = strtobool(self.conf.get("preload", "false"))
        for name, path in self.bundles.items():
            if name == INTERACTIVE_BUNDLE:
                for modality in INTERACTIVE_MODALITIES:
                    if os.path.exists(os.path.join(path, "models", f"model_{modality}.pt")):
                        infers[f"medt_click_{modality}"] = MedTClickInferTask(path, modality, preload=preload)
                continue
            task = MedTBundleInferTask(path, self.conf, dimension=self.dimensions[name])
            if task.is_valid():  # a bundle without models/model.pt (or model.ts) cannot infer yet
                infers[name] = task
        logger.info(f"+++ MedT infer tasks: {list(infers)}")
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        if strtobool(self.conf.get("skip_trainers", "false")):
            return trainers
        for name, path in self.bundles.items():
            if name == INTERACTIVE_BUNDLE:
                for modality in INTERACTIVE_MODALITIES:
                    extensions = IMAGE_EXTENSIONS if modality == "histology" else VOLUME_EXTENSIONS
                    trainers[f"medt_click_{modality}"] = MedTBundleTrainTask(
                        path, self.conf, extensions, overrides={"modality": modality}
                    )
                continue
            extensions = VOLUME_EXTENSIONS if self.dimensions[name] == 3 else IMAGE_EXTENSIONS
            # validate (and save models/model.pt, which the infer task reloads) after every epoch
            trainers[name] = MedTBundleTrainTask(path, self.conf, extensions, overrides={"val_interval": 1})
        return {k: v for k, v in trainers.items() if v.is_valid()}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        if not self.epistemic_model:
            return {}
        path = self.bundles[self.epistemic_model]
        task = MCDropoutBundleInferTask(
            path,
            self.conf,
            dimension=self.dimensions[self.epistemic_model],
            dropout=float(self.conf.get("epistemic_dropout", "0.2")),
        )
        return {
            "medt_epistemic": EpistemicScoring(
                task,
                max_samples=int(self.conf.get("epistemic_max_samples", "0")),
                simulation_size=int(self.conf.get("epistemic_simulation_size", "5")),
            )
        }
