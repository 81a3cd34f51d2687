# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Equivalence with the official implementation through its reference vectors (shared/reference)."""

from __future__ import annotations

import logging

import pytest
import torch

from monai_medt.networks import convert_official_state_dict, load_official
from monai_medt.networks.nets import MedT
from tests.conftest import require_path, shared_dir

VECTOR_FILES = ["axialunet_c3", "gated_c3", "MedT_c3", "MedT_c1", "logo_c3"]


def _load(name: str) -> dict:
    path = require_path(shared_dir() / "reference" / "official_medt_vectors" / f"{name}.pt")
    return torch.load(path, map_location="cpu", weights_only=False)


def _build(ref: dict, state_dict: dict | None = None) -> torch.nn.Module:
    kw = ref["kwargs"]
    return load_official(
        ref["official_factory"],
        ref["state_dict"] if state_dict is None else state_dict,
        img_size=kw["img_size"],
        in_channels=kw["imgchan"],
        out_channels=kw["num_classes"],
    )


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_reproduces_official_logits(name):
    ref = _load(name)
    net = _build(ref).eval()
    with torch.no_grad():
        out = net(ref["input"])
    assert out.shape == ref["output"].shape
    assert (out - ref["output"]).abs().max().item() <= 1e-5


def test_dataparallel_prefix_and_dropped_keys(caplog):
    ref = _load("MedT_c3")
    prefixed = {f"module.{k}": v for k, v in ref["state_dict"].items()}
    with caplog.at_level(logging.INFO, logger="monai_medt.networks.official"):
        net = _build(ref, prefixed).eval()
    with torch.no_grad():
        assert (net(ref["input"]) - ref["output"]).abs().max().item() <= 1e-5
    _, dropped = convert_official_state_dict(ref["state_dict"], "MedT")
    dead_convs = [k for k in dropped if k.startswith("layer") and ".conv1." in k]
    # every no-position block of the local branch (8 blocks) has an unused 1x1 conv with bias
    assert len(dead_convs) == 16 and all("_p." in k for k in dead_convs)
    assert {"adjust_p.weight", "adjust_p.bias"} <= set(dropped)
    assert sum(ref["state_dict"][k].numel() for k in dropped if "flatten_index" not in k) == 35_570
    assert "dropped" in caplog.text and "adjust_p.weight" in caplog.text


def test_converted_keys_are_ours_and_complete():
    ref = _load("gated_c3")
    converted, _ = convert_official_state_dict(ref["state_dict"], "gated")
    net = _build(ref)
    assert set(converted) == set(net.state_dict())
    torch.testing.assert_close(
        converted["stages.0.0.attn_h.gates"],
        torch.stack([ref["state_dict"][f"layer1.0.hight_block.{g}"] for g in ("f_qr", "f_kr", "f_sv", "f_sve")]),
    )


def test_mismatched_configuration_is_reported():
    ref = _load("MedT_c3")
    with pytest.raises(ValueError, match=r"in_channels=1.*local_stem.conv1.weight: \(64, 3, 7, 7\) vs \(64, 1, 7, 7\)"):
        load_official("MedT", ref["state_dict"], in_channels=1)
    with pytest.raises(ValueError, match="unknown official factory 'medt'"):
        load_official("medt", ref["state_dict"])
    with pytest.raises(ValueError, match=r"img_size=64.*relative: \(4, 127\) vs \(4, 63\)"):
        load_official("gated", _load("gated_c3")["state_dict"], img_size=64)


def test_loaded_medt_trains():
    """A ported model is an ordinary MedT: it takes an optimiser step and changes its output."""
    ref = _load("MedT_c3")
    net = _build(ref)
    assert isinstance(net, MedT)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = ref["input"], (ref["input"][:, 0] > 0.5).long()
    before = net.eval()(x).detach()
    net.train()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert (net.eval()(x).detach() - before).abs().max() > 1e-4
