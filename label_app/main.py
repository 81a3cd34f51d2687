# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
MONAI Label app serving the MedT bundles of this repository:

- ``medt_ct_segmentation`` (CT/MR volumes, slice-wise) and ``medt_glas_segmentation`` (H&E images): automatic
  segmentation (/infer) and training (/train) through the bundles' own configs;
- ``medt_click_<modality>`` from ``medt_interactive_segmentation``: click-guided MedT (DeepGrow type) for each
  modality whose weights exist (``models/model_<modality>.pt``);
- ``medt_epistemic``: MC-dropout scoring, when ``--conf epistemic_model <bundle>`` is given, and the ``epistemic``
  active-learning strategy that serves the unlabelled image with the highest score next.

A bundle without weights is trained through /train; its model (and the scoring on it) is served as soon as its
weights exist, without a restart.

Start (no network access at start-up; the bundles are copied from ``../bundles`` into ``model/`` on first start)::

    monailabel start_server --app label_app --studies /path/to/studies --conf models all

``--conf`` keys: ``models`` (comma-separated bundle names or ``all``), ``bundles_dir`` (where the bundles are read,
default ``<app>/../bundles``), ``model_dir`` (the writable copies, default ``<app>/model``), ``epistemic_model``,
``epistemic_dropout`` (0.2), ``epistemic_simulation_size`` (5), ``epistemic_max_samples`` (0 = all),
``preload`` (false), ``skip_trainers`` (false).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

import monai_medt
from monai_medt.label import stage_bundles
from monai_medt.label.infer import MCDropoutBundleInferTask, MedTBundleInferTask
from monai_medt.label.interactive import MedTClickInferTask
from monai_medt.label.scoring import MedTEpistemicScoring
from monai_medt.label.train import MedTBundleTrainTask

logger = logging.getLogger(__name__)

SEGMENTATION_BUNDLES = ("medt_ct_segmentation", "medt_glas_segmentation")
INTERACTIVE_BUNDLE = "medt_interactive_segmentation"
INTERACTIVE_MODALITIES = ("histology", "ct", "mr")
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _has_weights(bundle: str, name: str = "model") -> bool:
    return any(os.path.exists(os.path.join(bundle, "models", f"{name}{ext}")) for ext in (".pt", ".ts"))


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

    def _new_infers(self, served: Collection[str]) -> dict[str, InferTask]:
        """Infer tasks for the models not in ``served`` whose weights exist."""
        infers: dict[str, InferTask] = {}
        preload = strtobool(self.conf.get("preload", "false"))
        for name, path in self.bundles.items():
            if name == INTERACTIVE_BUNDLE:
                for modality in INTERACTIVE_MODALITIES:
                    key = f"medt_click_{modality}"
                    if key not in served and _has_weights(path, f"model_{modality}"):
                        infers[key] = MedTClickInferTask(path, modality, preload=preload)
            elif name not in served and _has_weights(path):
                infers[name] = MedTBundleInferTask(path, self.conf, dimension=self.dimensions[name])
        return infers

    def init_infers(self) -> dict[str, InferTask]:
        infers = self._new_infers(())
        logger.info(f"+++ MedT infer tasks: {list(infers)} (bundles without weights are served once trained)")
        return infers

    def _serve_trained(self) -> None:
        """
        Serve the models whose weights appeared since start-up: /train runs in a process of its own, so this server
        learns of a newly trained bundle only from its files. Called for /info and /infer (/scoring runs in a process
        that builds the app anew).
        """
        new = self._new_infers(self._infers)
        if new:
            logger.info(f"+++ MedT infer tasks added: {list(new)}")
            self._infers.update(new)
        if (settings.MONAI_LABEL_TASKS_SCORING and self.epistemic_model and not self._scoring_methods
                and _has_weights(self.bundles[self.epistemic_model])):
            self._scoring_methods.update(self.init_scoring_methods())

    def info(self):
        self._serve_trained()
        return super().info()

    def infer(self, request, datastore=None):
        self._serve_trained()
        return super().infer(request, datastore)

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
        strategies: dict[str, Strategy] = {"random": Random(), "first": First()}
        if self.epistemic_model:  # the scoring's entropy, highest first
            strategies["epistemic"] = Epistemic()
        return strategies

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        if not self.epistemic_model:
            return {}
        path = self.bundles[self.epistemic_model]
        if not _has_weights(path):
            logger.warning(f"epistemic_model '{self.epistemic_model}' has no weights yet: scored once it is trained")
            return {}
        dimension = self.dimensions[self.epistemic_model]
        task = MCDropoutBundleInferTask(
            path, self.conf, dimension=dimension, dropout=float(self.conf.get("epistemic_dropout", "0.2"))
        )
        return {
            "medt_epistemic": MedTEpistemicScoring(
                task,
                extensions=VOLUME_EXTENSIONS if dimension == 3 else IMAGE_EXTENSIONS,
                series_folders=dimension == 3,
                max_samples=int(self.conf.get("epistemic_max_samples", "0")),
                simulation_size=int(self.conf.get("epistemic_simulation_size", "5")),
            )
        }
