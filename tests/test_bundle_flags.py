# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Boolean bundle settings given on the command line arrive as strings ('false'); the configs read them as booleans."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.transforms import Resized

from monai_medt.bundle import flag, require_choice
from monai_medt.inferers import DihedralTTAInferer
from tests.conftest import REPO_ROOT

BUNDLES = REPO_ROOT / "bundles"


def test_flag_and_choice():
    assert [flag("x", v) for v in ("false", "False", "0", "no", False)] == [False] * 5
    assert [flag("x", v) for v in ("true", "TRUE", "1", "yes", True)] == [True] * 5
    with pytest.raises(ValueError, match="amp must be true or false, got 'maybe'"):
        flag("amp", "maybe")
    assert require_choice("eval_split", "val", ("test", "val")) == "val"
    with pytest.raises(ValueError, match="eval_split must be one of 'test', 'val', got 'train'"):
        require_choice("eval_split", "train", ("test", "val"))


def _parser(bundle: str, *configs: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / c) for c in configs])
    parser["bundle_root"] = str(BUNDLES / bundle)
    parser.update(overrides)
    return parser


@pytest.mark.parametrize("bundle", ["medt_glas_segmentation", "medt_ct_segmentation", "medt_interactive_segmentation"])
def test_amp_false_on_the_command_line_turns_amp_off(bundle):
    for text, expected in (("false", False), ("true", True)):
        parser = _parser(bundle, "train.json", amp=text)
        assert parser.get_parsed_content("train#trainer#amp") is expected
    with pytest.raises(RuntimeError) as err:  # the config parser wraps the ValueError
        _parser(bundle, "train.json", amp="maybe").get_parsed_content("train#trainer#amp")
    assert "amp must be true or false, got 'maybe'" in str(err.value.__cause__)


def test_glas_inference_flags():
    parser = _parser("medt_glas_segmentation", "inference.json", tta="false", resize="false")
    assert isinstance(parser.get_parsed_content("inferer"), SlidingWindowInferer)
    assert not any(isinstance(t, Resized) for t in parser.get_parsed_content("preprocessing").transforms)
    parser = _parser("medt_glas_segmentation", "inference.json", tta="true", resize="true")
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, DihedralTTAInferer) and isinstance(inferer.inferer, SlidingWindowInferer)
    assert any(isinstance(t, Resized) for t in parser.get_parsed_content("preprocessing").transforms)


@pytest.mark.parametrize("bundle", ["medt_glas_segmentation", "medt_ct_segmentation"])
@pytest.mark.parametrize("configs", [("train.json",), ("train.json", "multi_gpu_train.json")])
def test_seed_reaches_set_determinism(bundle, configs):
    """``--seed`` (default 3000) seeds the training run, single-process and DDP alike."""
    import torch
    from monai.utils import set_determinism

    for seed in (None, 7):
        parser = _parser(bundle, *configs) if seed is None else _parser(bundle, *configs, seed=seed)
        items = parser["initialize"]
        index = next(i for i, item in enumerate(items) if "set_determinism" in item)
        try:
            parser.get_parsed_content(f"initialize#{index}")
            assert torch.initial_seed() == (3000 if seed is None else seed)
        finally:
            set_determinism(seed=None)  # leave the process's random state and cuDNN flags as other tests expect
