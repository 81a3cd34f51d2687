# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The attention layers against a direct transcription of the MedT / Axial-DeepLab equations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from monai_medt.networks.blocks import AxialAttention, AxialAttentionNoPos, GatedAxialAttention
from monai_medt.networks.blocks.cpu_kernel import KERNEL_ENV


def _bn(x: torch.Tensor, norm: torch.nn.BatchNorm2d, train: bool) -> torch.Tensor:
    """Batch norm over dim 1 of any-rank x, with the module's parameters (no running-stat update)."""
    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    if train:
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
    else:
        mean, var = norm.running_mean, norm.running_var
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + norm.eps) * norm.weight.view(shape) + norm.bias.view(
        shape
    )


def _sequence_qkv(layer: torch.nn.Module, x: torch.Tensor, train: bool):
    """q, k, v of every column (height) or row (width) as (B*O, heads, c, L), projected and batch-normalised."""
    seq = x.permute(0, 3, 1, 2) if layer.axis == "height" else x.permute(0, 2, 1, 3)  # (B, O, C, L)
    n, length = seq.shape[0] * seq.shape[1], seq.shape[3]
    qkv = torch.einsum("oc,ncl->nol", layer.qkv.weight[:, :, 0, 0], seq.reshape(n, -1, length))
    qkv = _bn(qkv, layer.qkv_norm, train).view(n, layer.num_heads, 2 * layer.head_dim, length)
    return torch.split(qkv, [layer.qk_dim, layer.qk_dim, layer.head_dim], dim=2)


def _sequences_to_map(layer: torch.nn.Module, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B*O, C, L) outputs back to the (B, C, H, W) map of ``x``, average-pooled by the layer's stride."""
    b, _, h, w = x.shape
    height = layer.axis == "height"
    out = out.reshape(b, w if height else h, layer.out_channels, -1)
    out = out.permute(0, 2, 3, 1) if height else out.permute(0, 2, 1, 3)
    return F.avg_pool2d(out, layer.stride) if layer.stride > 1 else out


def reference_attention(layer: AxialAttention, x: torch.Tensor, train: bool) -> torch.Tensor:
    """Sequence-by-sequence transcription of spec section 2 (einsums over (batch*other, heads, c, L))."""
    q, k, v = _sequence_qkv(layer, x, train)
    n, length = q.shape[0], q.shape[3]
    rel = torch.arange(length)
    emb = layer.relative[:, rel[:, None] - rel[None, :] + length - 1]
    eq, ek, ev = torch.split(emb, [layer.qk_dim, layer.qk_dim, layer.head_dim], dim=0)
    gq, gk, gv, gve = layer.gates
    before = not layer.gate_after_norm
    qk = torch.einsum("ngci,ngcj->ngij", q, k)
    qr = torch.einsum("ngci,cij->ngij", q, eq) * (gq if before else 1)
    kr = torch.einsum("ngci,cij->ngij", k, ek).transpose(2, 3) * (gk if before else 1)
    logits = _bn(torch.cat([qk, qr, kr], dim=1), layer.logit_norm, train).view(n, 3, layer.num_heads, length, -1)
    if not before:
        logits = logits * torch.stack([torch.ones(()), gq, gk]).view(1, 3, 1, 1, 1)
    attn = F.softmax(logits.sum(1), dim=3)
    sv = torch.einsum("ngij,ngcj->ngci", attn, v) * (gv if before else 1)
    sve = torch.einsum("ngij,cij->ngci", attn, ev) * (gve if before else 1)
    out = torch.cat([sv, sve], dim=-1).view(n, 2 * layer.out_channels, length)
    out = _bn(out, layer.out_norm, train).view(n, layer.out_channels, 2, length)
    if not before:
        out = out * torch.stack([gv, gve]).view(1, 1, 2, 1)
    return _sequences_to_map(layer, out.sum(2), x)


def reference_nopos(layer: AxialAttentionNoPos, x: torch.Tensor, train: bool) -> torch.Tensor:
    """The same transcription for the attention without positions: content logits and values only."""
    q, k, v = _sequence_qkv(layer, x, train)
    n, length = q.shape[0], q.shape[3]
    attn = F.softmax(_bn(torch.einsum("ngci,ngcj->ngij", q, k), layer.logit_norm, train), dim=3)
    sv = torch.einsum("ngij,ngcj->ngci", attn, v).reshape(n, layer.out_channels, length)
    return _sequences_to_map(layer, _bn(sv, layer.out_norm, train), x)


def _randomise_norms(layer: torch.nn.Module) -> None:
    for m in layer.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("axis", ["height", "width"])
@pytest.mark.parametrize("gate_position", ["before_norm", "after_norm"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_matches_reference(axis, gate_position, train, stride, attention_backend):
    layer = GatedAxialAttention(
        8, 16, kernel_size=12 if axis == "height" else 10, num_heads=4, axis=axis, stride=stride,
        gate_position=gate_position, gate_init=(0.3, -0.7, 1.3, 0.5),
    )
    _randomise_norms(layer)
    layer.train(train)
    x = torch.randn(2, 8, 12, 10)
    expected = reference_attention(layer, x, train)
    out = layer(x)
    assert out.shape == (2, 16, 12 // stride, 10 // stride)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("axis", ["height", "width"])
@pytest.mark.parametrize("gate_position", ["before_norm", "after_norm"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_matches_reference_in_both_layouts(axis, gate_position, stride, channels_last, attention_backend):
    """
    Eval-mode inference without gradients: on the fused kernel each layer runs from its projected map to its output map
    in one call (reading and writing through strides); the PyTorch path copies a channels-last input. The output keeps
    the input's memory format on the kernel and is right in both layouts on both paths.
    """
    layer = GatedAxialAttention(
        8, 32, kernel_size=12 if axis == "height" else 10, num_heads=4, axis=axis, stride=stride,
        gate_position=gate_position, gate_init=(0.3, -0.7, 1.3, 0.5),
    )
    nopos = AxialAttentionNoPos(8, 32, num_heads=4, axis=axis, stride=stride)
    x = torch.randn(2, 8, 12, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for module in (layer, nopos):
        _randomise_norms(module)
        module.eval()
        calls = []
        attend_map = module._attend_map
        module._attend_map = lambda *args, f=attend_map: calls.append(1) or f(*args)
        with torch.no_grad():
            out = module(x)
        del module._attend_map
        assert len(calls) == (1 if attention_backend == "fused" else 0)
        reference = reference_attention if module is layer else reference_nopos
        expected = reference(module, x.contiguous(), False)
        assert out.shape == (2, 32, 12 // stride, 10 // stride)
        if attention_backend == "fused":
            assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("axis", ["height", "width"])
def test_eval_gradients_match_reference(axis):
    """Eval mode folds both batch norms into the projection and the output map; gradients still flow (saliency)."""
    layer = GatedAxialAttention(8, 16, kernel_size=12 if axis == "height" else 10, num_heads=4, axis=axis,
                                gate_position="after_norm", gate_init=(0.3, -0.7, 1.3, 0.5), learnable_gates=True)
    _randomise_norms(layer)
    layer.eval()
    x = torch.randn(2, 8, 12, 10, requires_grad=True)
    grads = []
    for forward in (layer, lambda t: reference_attention(layer, t, False)):
        layer.zero_grad()
        x.grad = None
        forward(x).pow(2).sum().backward()
        grads.append((x.grad.clone(), layer.qkv.weight.grad.clone(), layer.gates.grad.clone()))
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_ungated_equals_unit_gates():
    torch.manual_seed(1)
    plain = AxialAttention(8, 16, kernel_size=8, num_heads=4, axis="width")
    gated = GatedAxialAttention(8, 16, kernel_size=8, num_heads=4, axis="width", gate_init=(1.0, 1.0, 1.0, 1.0))
    gated.load_state_dict({**plain.state_dict(), "gates": torch.ones(4)})
    x = torch.randn(3, 8, 5, 8)
    torch.testing.assert_close(plain(x), gated(x))
    assert "gates" not in plain.state_dict() and "gates" in gated.state_dict()


def test_gate_placement_matters():
    """After the norm a gate scales its term; before the (train-mode) norm a positive scale is normalised away."""
    x = torch.randn(2, 8, 8, 8)
    outs = {}
    for position in ("before_norm", "after_norm"):
        for scale in (1.0, 3.0):
            torch.manual_seed(2)
            layer = GatedAxialAttention(8, 16, 8, num_heads=4, gate_position=position, gate_init=(0.1, 0.1, scale, 0.1))
            outs[position, scale] = layer.train()(x)
    torch.testing.assert_close(outs["before_norm", 1.0], outs["before_norm", 3.0], atol=1e-4, rtol=1e-3)
    assert (outs["after_norm", 1.0] - outs["after_norm", 3.0]).abs().max() > 0.1


def test_gates_frozen_or_learnable():
    frozen = GatedAxialAttention(8, 16, 8, num_heads=4)
    learnable = GatedAxialAttention(8, 16, 8, num_heads=4, learnable_gates=True)
    x = torch.randn(2, 8, 8, 8)
    frozen(x).sum().backward()
    learnable(x).pow(2).sum().backward()
    assert frozen.gates.grad is None and not frozen.gates.requires_grad
    assert learnable.gates.grad is not None and learnable.gates.grad.abs().sum() > 0
    torch.testing.assert_close(frozen.gates.detach(), torch.tensor([0.1, 0.1, 1.0, 0.1]))


def test_nopos_matches_reference_and_any_length(attention_backend):
    layer = AxialAttentionNoPos(8, 16, num_heads=4, axis="height")
    _randomise_norms(layer)
    for train in (True, False):
        layer.train(train)
        x = torch.randn(2, 8, 7, 9)
        torch.testing.assert_close(layer(x), reference_nopos(layer, x, train), atol=2e-5, rtol=1e-4)


def test_length_checked_in_forward():
    layer = AxialAttention(8, 16, kernel_size=12, num_heads=4, axis="width")
    with pytest.raises(ValueError, match="built for length 12"):
        layer(torch.randn(1, 8, 12, 10))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(out_channels=12), "out_channels"),
        (dict(num_heads=0), "num_heads"),
        (dict(stride=3), "stride"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(gate_init=(1.0, 2.0)), "gate_init"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = dict(in_channels=8, out_channels=16, kernel_size=8, num_heads=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        GatedAxialAttention(**args)


def test_bad_axis_and_gate_position():
    with pytest.raises(ValueError, match="depth"):
        AxialAttention(8, 16, 8, num_heads=4, axis="depth")
    with pytest.raises(ValueError, match="middle"):
        AxialAttention(8, 16, 8, num_heads=4, gate_position="middle")


def _assert_grad_close(ours: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    # float32 sums over thousands of terms: tolerance scaled to the gradient's magnitude (entries whose exact value is
    # 0, e.g. BN shifts followed by another BN, come out as rounding noise of the large ones)
    scale = expected.abs().max().item()
    torch.testing.assert_close(ours, expected, atol=2e-5 * scale + 1e-7, rtol=1e-3, msg=f"gradient of {name}")


def _loss_weights(shape, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("axis", ["height", "width"])
@pytest.mark.parametrize("gate_position", ["before_norm", "after_norm"])
@pytest.mark.parametrize("stride", [1, 2])
def test_train_gradients_match_reference(axis, gate_position, stride, attention_backend):
    """The hand-written backward and the analytic batch-norm statistics give autograd's gradients of the spec."""
    torch.manual_seed(4)
    layer = GatedAxialAttention(
        8, 16, kernel_size=12 if axis == "height" else 10, num_heads=4, axis=axis, stride=stride,
        gate_position=gate_position, learnable_gates=True, gate_init=(0.3, -0.7, 1.3, 0.5),
    )
    _randomise_norms(layer)
    layer.train()
    x = torch.randn(2, 8, 12, 10, requires_grad=True)
    weights = _loss_weights((2, 16, 12 // stride, 10 // stride))

    (layer(x) * weights).sum().backward()
    ours = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    ours["input"] = x.grad.clone()
    layer.zero_grad()
    x.grad = None
    layer.logit_norm.bias.requires_grad_(True)  # frozen in the layer; the reference shows why
    (reference_attention(layer, x, train=True) * weights).sum().backward()
    reference = {name: p.grad for name, p in layer.named_parameters()}
    reference["input"] = x.grad

    # the logit-norm shift is constant along every softmax row: its exact gradient is zero and we do not compute it
    # (the float32 reference shows ~1e-5 of rounding there, depending on the CPU's kernels; float64 shows the zero)
    assert "logit_norm.bias" not in ours
    exact = copy.deepcopy(layer).double()
    x64 = x.detach().double().requires_grad_(True)
    (reference_attention(exact, x64, train=True) * weights.double()).sum().backward()
    assert exact.logit_norm.bias.grad.abs().max() < 1e-10
    assert exact.logit_norm.weight.grad.abs().max() > 1e-3  # the check sees gradients where there are some
    for name, grad in reference.items():
        if name == "logit_norm.bias":
            continue
        if name == "gates" and gate_position == "before_norm":
            # before a train-mode BN a gate acts only through eps: its gradient is a difference of large terms
            torch.testing.assert_close(ours[name], grad, atol=5e-4, rtol=1e-2, msg="gradient of gates")
            continue
        _assert_grad_close(ours[name], grad, name)


@pytest.mark.parametrize("cls", ["axial", "nopos"])
def test_running_statistics_match_batchnorm(cls, attention_backend):
    """Analytic logit statistics update running_mean/var exactly as BatchNorm2d on the explicit logits would."""
    torch.manual_seed(5)
    if cls == "axial":
        layer = AxialAttention(8, 16, kernel_size=9, num_heads=4, axis="width")
    else:
        layer = AxialAttentionNoPos(8, 16, num_heads=4, axis="width")
    layer.train()
    x = torch.randn(3, 8, 7, 9) + 0.5
    with torch.no_grad():
        qkv = layer.qkv_norm(layer.qkv(x))  # batch statistics, as the layer will see them
    layer.qkv_norm.running_mean.zero_()
    layer.qkv_norm.running_var.fill_(1.0)
    layer.qkv_norm.num_batches_tracked.zero_()
    seq = qkv.permute(0, 2, 1, 3).reshape(21, 4, 8, 9)  # (B * H, G, 2d, W)
    q, k = seq[:, :, :2], seq[:, :, 2:4]
    terms = [torch.einsum("ngci,ngcj->ngij", q, k)]
    if cls == "axial":
        rel = torch.arange(9)
        emb = layer.relative.detach()[:, rel[:, None] - rel[None, :] + 8]
        terms.append(torch.einsum("ngci,cij->ngij", q, emb[:2]))
        terms.append(torch.einsum("ngci,cij->ngij", k, emb[2:4]).transpose(2, 3))
    expected = torch.nn.BatchNorm2d(4 * len(terms)).train()
    expected(torch.cat(terms, dim=1))
    with torch.no_grad():
        layer(x)
    torch.testing.assert_close(layer.logit_norm.running_mean, expected.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.logit_norm.running_var, expected.running_var, atol=1e-6, rtol=1e-5)
    assert int(layer.logit_norm.num_batches_tracked) == 1


def test_chunked_kernel_equals_single_pass(monkeypatch):
    """Results of the PyTorch kernel do not depend on how many sequences each chunk holds (forward and backward)."""
    from monai_medt.networks.blocks import attention_core

    monkeypatch.setenv(KERNEL_ENV, "0")  # the chunked PyTorch path (GPUs, TorchScript, no compiler)

    x = torch.randn(2, 8, 16, 16)
    results = []
    for chunk_bytes in (2 * 2**20, 4 * 16 * 16 * 5):  # one chunk / chunks of 5 sequences
        monkeypatch.setattr(attention_core, "CPU_CHUNK_BYTES", chunk_bytes)
        torch.manual_seed(6)
        layer = GatedAxialAttention(8, 16, kernel_size=16, num_heads=4, learnable_gates=True).train()
        xi = x.clone().requires_grad_(True)
        (layer(xi) * _loss_weights((2, 16, 16, 16))).sum().backward()
        results.append([xi.grad] + [p.grad for p in layer.parameters() if p.grad is not None])
    for a, b in zip(*results):
        _assert_grad_close(a, b, "chunked vs single pass")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("train", [True, False])
def test_output_relu_is_the_relu_of_the_output(stride, train, attention_backend):
    """``output_relu=True`` returns the ReLU of the (pooled) output of the same layer without it, with its gradient."""
    results = []
    for output_relu in (False, True):
        torch.manual_seed(4)
        args = {"num_heads": 4, "axis": "width", "stride": stride, "output_relu": output_relu}
        for layer in (GatedAxialAttention(8, 16, kernel_size=12, **args), AxialAttentionNoPos(8, 16, **args)):
            if not train:  # running statistics away from their initial values
                layer.train()(torch.randn(2, 8, 10, 12) * 2.0 + 1.0)
            layer.train(train)
            x = torch.randn(2, 8, 10, 12, requires_grad=True)
            out = layer(x)
            # the same loss of the rectified output both ways
            (out if output_relu else F.relu(out)).pow(2).sum().backward()
            results.append((out.detach(), x.grad))
    for (plain, plain_grad), (with_relu, relu_grad) in zip(results[:2], results[2:]):
        assert (plain < 0).any() and (plain > 0).any()
        torch.testing.assert_close(with_relu, F.relu(plain), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(relu_grad, plain_grad, rtol=1e-4, atol=1e-5)
