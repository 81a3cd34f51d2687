# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Shapes, gradients, argument checks and eval behaviour of the four networks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from monai_medt.networks import gate_values, set_gates_trainable
from monai_medt.networks.blocks import attention_core
from monai_medt.networks.blocks import axial_attention as axial_attention_module
from monai_medt.networks.blocks import conv_norm as conv_norm_module
from monai_medt.networks.blocks import stem as stem_module
from monai_medt.networks.blocks.axial_attention import GatedAxialAttention
from monai_medt.networks.blocks.conv_norm import conv_norm
from monai_medt.networks.blocks.cpu_kernel import KERNEL_ENV
from monai_medt.networks.blocks.stem import ConvStem
from monai_medt.networks.nets import AxialUNet, GatedAxialUNet, LoGo, MedT

VARIANTS = {"MedT": MedT, "LoGo": LoGo, "AxialUNet": AxialUNet, "GatedAxialUNet": GatedAxialUNet}
LOCAL_GLOBAL = (MedT, LoGo)


def build(cls, in_channels, out_channels, size, **kwargs):
    if cls in LOCAL_GLOBAL:
        # tiles must be multiples of 32 px
        size_t = (size, size) if isinstance(size, int) else size
        kwargs.setdefault("patch_grid", (max(1, size_t[0] // 32), max(1, size_t[1] // 32)))
    return cls(in_channels, out_channels, img_size=size, **kwargs)


# every variant at 64 and 64x96 with three channel/class settings, and at the official 128 with 3 -> 2
SHAPE_CASES = [
    (name, size, cin, cout)
    for name in VARIANTS
    for size, channel_cases in (
        (64, [(1, 1), (3, 2), (2, 4)]),
        ((64, 96), [(1, 1), (3, 2), (2, 4)]),
        (128, [(3, 2)]),
    )
    for cin, cout in channel_cases
]


@pytest.mark.parametrize("name, size, in_channels, out_channels", SHAPE_CASES)
def test_shapes(name, size, in_channels, out_channels):
    net = build(VARIANTS[name], in_channels, out_channels, size).eval()
    h, w = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        out = net(torch.rand(2, in_channels, h, w))
    assert out.shape == (2, out_channels, h, w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size, grid", [(128, [4, 4]), (256, [4, 4]), (64, [2, 2]), ((96, 160), [3, 1])])
def test_patch_grid_derived_from_img_size(size, grid):
    assert MedT(1, 2, img_size=size).grid == grid


@pytest.mark.parametrize("cls", [MedT, LoGo])
def test_local_global_256_grid(cls):
    net = cls(1, 2, img_size=256).eval()  # 4x4 tiles of 64 px
    assert net.tile == [64, 64]
    with torch.no_grad():
        assert net(torch.rand(1, 1, 256, 256)).shape == (1, 2, 256, 256)


@pytest.mark.parametrize(
    "cls, expected",
    # official totals less their dead parameters (MedT: 35,536 in unused 1x1 convs + 34 in adjust_p; logo: adjust_p)
    [(AxialUNet, 1_326_850), (GatedAxialUNet, 1_326_914), (MedT, 1_524_570), (LoGo, 1_529_498)],
)
def test_official_parameter_counts(cls, expected):
    net = cls(3, 2, img_size=128)
    assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize("name", VARIANTS)
def test_train_backward_reaches_every_parameter(name):
    kwargs = {} if VARIANTS[name] in (AxialUNet, LoGo) else {"learnable_gates": True}
    net = build(VARIANTS[name], 3, 3, 64, dropout=0.1, **kwargs).train()
    x = torch.rand(2, 3, 64, 64)
    target = torch.randint(0, 3, (2, 64, 64))
    loss = F.cross_entropy(net(x), target)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in net.named_parameters():
        if pname.endswith("logit_norm.bias"):
            # a per-head constant added to every logit of a softmax row cancels: its exact gradient is zero, so it
            # is frozen (test_axial_attention checks that autograd through the spec gives ~0 too)
            assert not p.requires_grad and p.grad is None, pname
            continue
        assert p.requires_grad, pname
        assert p.grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"zero gradient at {pname}"


def test_gates_frozen_by_default_then_unfrozen():
    net = MedT(3, 2, img_size=64, patch_grid=2).train()
    gates = [p for n, p in net.named_parameters() if n.endswith("gates")]
    assert len(gates) == 6 and not any(g.requires_grad for g in gates)
    F.cross_entropy(net(torch.rand(2, 3, 64, 64)), torch.randint(0, 2, (2, 64, 64))).backward()
    assert all(g.grad is None for g in gates)
    assert set_gates_trainable(net, True) == 6
    F.cross_entropy(net(torch.rand(2, 3, 64, 64)), torch.randint(0, 2, (2, 64, 64))).backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates)
    values = gate_values(net)
    assert len(values) == 6 and all(v == pytest.approx([0.1, 0.1, 1.0, 0.1]) for v in values.values())


@pytest.mark.parametrize("name", VARIANTS)
def test_eval_deterministic_and_batch_independent(name):
    net = build(VARIANTS[name], 3, 2, 64, dropout=0.3)
    # make eval-mode batch norm differ from identity so the check has teeth
    with torch.no_grad():
        net.train()(torch.rand(4, 3, 64, 64))
    net.eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        a, b, single = net(x), net(x), net(x[1:2])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a[1:2], single, atol=1e-5, rtol=1e-5)


def test_dropout_active_in_train_only():
    net = AxialUNet(3, 2, img_size=64, dropout=0.5)
    x = torch.rand(2, 3, 64, 64)
    net.train()
    torch.manual_seed(0)
    a = net(x)
    b = net(x)
    assert (a - b).abs().max() > 1e-4
    net.eval()
    torch.testing.assert_close(net(x), net(x))


def test_local_branch_tiles_are_independent():
    """Each output tile of the local branch depends only on its own input tile (no patch interaction)."""
    net = MedT(1, 2, img_size=64, patch_grid=2).eval()
    captured = {}
    net.local_decoder.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        net(x)
        base = captured["out"].clone()
        x2 = x.clone()
        x2[..., :32, :32] = torch.rand(32, 32)  # change the top-left tile only
        net(x2)
    changed = (captured["out"] - base).abs().flatten(1).amax(1)
    assert changed[0] > 0 and torch.all(changed[1:] == 0)


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        (MedT, dict(in_channels=0), "in_channels"),
        (MedT, dict(out_channels=0), "out_channels"),
        (AxialUNet, dict(img_size=48), "img_size"),
        (AxialUNet, dict(img_size=(64, 80)), "img_size"),
        (MedT, dict(img_size=64, patch_grid=4), "patch_grid"),
        (MedT, dict(img_size=(128, 80)), "img_size"),
        (MedT, dict(patch_grid=0), "patch_grid"),
        (LoGo, dict(dropout=1.5), "dropout"),
        (GatedAxialUNet, dict(channels=(32, 64, 128, 250)), "channels"),
        (AxialUNet, dict(depths=(1, 2, 4)), "depths"),
        (AxialUNet, dict(depths=(1, 0, 4, 1)), "depths"),
        (MedT, dict(global_stages=5), "global_stages"),
        (MedT, dict(num_heads=0), "num_heads"),
        (MedT, dict(global_attention="local"), "local"),
        (GatedAxialUNet, dict(gate_position="inside"), "inside"),
    ],
)
def test_bad_arguments(cls, kwargs, name):
    args = dict(in_channels=3, out_channels=2, img_size=128)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        cls(**args)


@pytest.mark.parametrize("cls", [MedT, AxialUNet])
def test_wrong_input_shape(cls):
    net = build(cls, 3, 2, 64)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 3, 64, 64\).*\[1, 3, 64, 96\]"):
        net(torch.rand(1, 3, 64, 96))
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\).*\[1, 1, 64, 64\]"):
        net(torch.rand(1, 1, 64, 64))


def test_paper_options_change_the_model():
    torch.manual_seed(0)
    official = MedT(3, 2, img_size=64, patch_grid=2)
    paper = MedT(3, 2, img_size=64, patch_grid=2, fusion_conv=False, gate_position="after_norm")
    assert "fusion.weight" in official.state_dict() and "fusion.weight" not in paper.state_dict()
    learnable = MedT(3, 2, img_size=64, patch_grid=2, learnable_gates=True)
    assert all(p.requires_grad for n, p in learnable.named_parameters() if not n.endswith("logit_norm.bias"))


def test_stem_runs_channels_last_in_cpu_inference_only(monkeypatch):
    torch.manual_seed(0)
    stem = ConvStem(3, 16, 32).eval()
    seen = []

    def record(conv, norm, x, relu=False):  # the eval-mode convs run through conv_norm, not the conv modules
        if conv is stem.conv2:
            seen.append(x.is_contiguous())
        return conv_norm(conv, norm, x, relu)

    monkeypatch.setattr(stem_module, "conv_norm", record)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = stem.layers(x)
        out = stem(x)
    assert seen == [True, False]  # the inference forward hands the convs a channels-last tensor
    # ... and returns that layout: the blocks after the stem keep it in inference
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert torch.allclose(out, expected, atol=1e-6)
    out = stem(x)  # with gradients: the caller's layout throughout
    assert seen[-1] and out.is_contiguous() and torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("cls", [MedT, GatedAxialUNet])
def test_activation_checkpointing_gives_the_same_gradients(cls):
    """Checkpointed blocks and stems recompute in the backward pass: same gradients, same running statistics."""
    x = torch.rand(2, 3, 64, 64)
    target = torch.randint(0, 2, (2, 64, 64))
    grads, buffers, calls = [], [], []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        net = cls(3, 2, img_size=64, learnable_gates=True, use_checkpoint=use_checkpoint).train()
        count = [0, 0]
        first_block = next(m for m in net.modules() if type(m).__name__ == "AxialBlock")
        first_block.attn_h.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        first_stem = next(m for m in net.modules() if type(m).__name__ == "ConvStem")
        first_stem.conv2.register_forward_hook(lambda *_: count.__setitem__(1, count[1] + 1))
        for _ in range(2):  # the second step starts from statistics the first one updated
            F.cross_entropy(net(x), target).backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
        buffers.append(dict(net.named_buffers()))
        calls.append(count)
    assert calls == [[2, 2], [4, 4]]  # checkpointing recomputes the block and the stem in each backward pass
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)
    assert any(b.abs().sum() > 0 for n, b in buffers[0].items() if n.endswith("running_mean"))  # statistics moved
    for name in buffers[0]:
        torch.testing.assert_close(buffers[0][name], buffers[1][name], atol=1e-6, rtol=1e-5, msg=name)


class _HostTensorOps(TorchDispatchMode):
    """Records every operator call that receives a CPU tensor (a host-to-device copy or a host scalar tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in tree_leaves((args, kwargs))):
            self.calls.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_accelerator_path_reads_no_tensor_on_the_host(name):
    """
    The path of every non-CPU device (no fused kernel, unchunked attention) never needs a tensor's value on the host:
    a train step and an eval forward run on the meta device, which holds no data, so any ``.item()``,
    ``bool(tensor)`` or copy to the CPU would raise. Nor does any operator receive a CPU tensor, which on a GPU would
    be a copy from the host or a host scalar frozen into a captured graph. The networks' GPU steps then never wait for
    the device, and CUDA-graph capture (``benchmarks/bench_networks.py --cuda-graphs``) meets no host transfer in them.
    """
    with torch.device("meta"):
        net = build(VARIANTS[name], 3, 2, 64)
        x, y = torch.empty(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long)
    with _HostTensorOps() as host_ops:
        F.cross_entropy(net(x), y).backward()
        with torch.no_grad():
            out = net.eval()(x)
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.is_meta for p in trainable)
    assert out.is_meta and out.shape == (2, 2, 64, 64)
    assert host_ops.calls == []


@pytest.mark.parametrize("name", list(VARIANTS))
def test_accelerator_forms_match_the_cpu_forms(name, monkeypatch):
    """
    The forms that accelerators run, computed on the CPU (the PyTorch attention with batched logits, eval-mode norms
    not folded), give the CPU forms' eval outputs and training loss and gradients (float64, where an untrained
    network's gradients are well conditioned): the meta-device test above checks their shapes, this their values.
    """
    kwargs = {} if VARIANTS[name] in (AxialUNet, LoGo) else {"learnable_gates": True}
    net = build(VARIANTS[name], 3, 2, 64, **kwargs).double()
    x, y = torch.rand(2, 3, 64, 64, dtype=torch.float64), torch.randint(0, 2, (2, 64, 64))
    with torch.no_grad():
        net.train()(x)  # running statistics that differ from the initial ones
    state = copy.deepcopy(net.state_dict())

    def run():
        net.load_state_dict(state)
        with torch.no_grad():
            out = net.eval()(x)
        net.train().zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return [out, loss.detach()] + [p.grad for p in net.parameters() if p.requires_grad]

    cpu = run()
    monkeypatch.setenv(KERNEL_ENV, "0")
    monkeypatch.setattr(attention_core, "_batched", lambda t: True)
    monkeypatch.setattr(conv_norm_module, "folds_norms", lambda t: False)
    monkeypatch.setattr(axial_attention_module, "folds_norms", lambda t: False)
    accelerator = run()
    assert len(accelerator) == len(cpu) > 30
    for index, (got, want) in enumerate(zip(accelerator, cpu)):
        # absolute: some gradients are zero but for rounding (a norm's shift before another norm)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-7, msg=lambda m, i=index: f"output {i}: {m}")


@pytest.mark.parametrize("cls", [MedT, AxialUNet])
def test_bf16_autocast_close_to_fp32(cls):
    """Mixed precision keeps the logits and softmax in fp32 inside the attention: bf16 outputs stay close."""
    net = cls(3, 2, img_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_step(dtype):
    """A MedT train step under autocast (the bundles' opt-in AMP) runs: loss close to fp32's, all gradients finite."""
    torch.manual_seed(0)
    net = MedT(3, 2, img_size=32)
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    losses = []
    for amp in (False, True):
        net.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=amp):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        losses.append(loss.item())
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert len(grads) > 100 and all(torch.isfinite(g).all() for g in grads)
    assert abs(losses[1] - losses[0]) < 0.01 * losses[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batched", [False, True])
def test_gated_attention_gradients_under_autocast(dtype, batched, monkeypatch):
    """
    The attention core runs in fp32 under autocast, so a gated axial attention's gradients match fp32's; also on the
    PyTorch path with the batched logits of accelerators (``batched``).
    """
    if batched:
        monkeypatch.setenv(KERNEL_ENV, "0")
        monkeypatch.setattr(attention_core, "_batched", lambda x: True)
    torch.manual_seed(0)
    attn = GatedAxialAttention(16, 16, kernel_size=32, axis="width", learnable_gates=True)
    x = torch.randn(2, 16, 32, 32, requires_grad=True)
    weight = torch.randn(2, 16, 32, 32)
    grads = []
    for amp in (False, True):
        attn.zero_grad()
        x.grad = None
        with torch.autocast("cpu", dtype=dtype, enabled=amp):
            out = attn(x)
        assert out.dtype == torch.float32
        (out * weight).sum().backward()
        param_grads = [p.grad.flatten() for p in attn.parameters() if p.grad is not None]
        grads.append(torch.cat([x.grad.flatten(), *param_grads]))
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.999
