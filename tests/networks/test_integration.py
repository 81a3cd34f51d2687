# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""MONAI bundle config resolution, TorchScript, torch.export and ONNX."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from monai.bundle import ConfigParser

from monai_medt.networks.nets import AxialUNet, GatedAxialUNet, LoGo, MedT


def _trained_eval(net: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        net.train()(torch.rand(4, net.in_channels, *net.img_size))  # non-trivial running statistics
    return net.eval()


@pytest.mark.parametrize("target", ["monai_medt.networks.nets.MedT", "MedT"])
def test_bundle_config_builds_medt(target):
    config = {
        "imports": ["$import monai_medt"],
        "network_def": {"_target_": target, "in_channels": 1, "out_channels": 3, "img_size": 64, "patch_grid": 2},
    }
    parser = ConfigParser(config)
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, MedT)
    assert net(torch.rand(1, 1, 64, 64)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("target", ["GatedAxialUNet", "AxialUNet", "LoGo"])
def test_bundle_config_short_names(target):
    parser = ConfigParser(
        {"imports": ["$import monai_medt"], "net": {"_target_": target, "in_channels": 3, "out_channels": 2, "img_size": 64, "patch_grid": 2}}
        if target == "LoGo"
        else {"imports": ["$import monai_medt"], "net": {"_target_": target, "in_channels": 3, "out_channels": 2, "img_size": 64}}
    )
    assert type(parser.get_parsed_content("net")).__name__ == target


CASES = [
    (MedT, dict(patch_grid=2, dropout=0.1)),
    (LoGo, dict(patch_grid=2)),
    (GatedAxialUNet, dict(gate_position="after_norm")),
    (AxialUNet, {}),
]


@pytest.mark.parametrize("cls, kwargs", CASES)
def test_torchscript_reproduces_eager(cls, kwargs, tmp_path):
    net = _trained_eval(cls(3, 2, img_size=64, **kwargs))
    scripted = torch.jit.script(net)
    path = tmp_path / "model.ts"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-6, rtol=1e-5)
    with pytest.raises(torch.jit.Error, match="expects input of shape"):
        loaded(torch.rand(1, 3, 32, 64))


@pytest.mark.parametrize("cls, kwargs", CASES[:1] + CASES[2:3])
def test_torch_export_reproduces_eager(cls, kwargs):
    net = _trained_eval(cls(3, 2, img_size=64, **kwargs))
    x = torch.rand(2, 3, 64, 64)
    program = torch.export.export(net, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net(x), atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are not installed (pip install monai-medt[export])",
)
def test_onnx_reproduces_eager(tmp_path):
    import onnxruntime

    net = _trained_eval(MedT(1, 2, img_size=64, patch_grid=2))
    path = tmp_path / "medt.onnx"
    torch.onnx.export(
        net, (torch.rand(2, 1, 64, 64),), str(path), input_names=["image"], output_names=["pred"], dynamo=False,
        opset_version=17, dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}},
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # other batch sizes than the traced one
        x = torch.rand(batch, 1, 64, 64)
        (onnx_out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(onnx_out), net(x), atol=1e-4, rtol=1e-4)
