# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""The fused CPU attention kernel against the PyTorch implementation of the same math, and its fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from monai_medt.networks.blocks import AxialAttention, AxialAttentionNoPos, GatedAxialAttention
from monai_medt.networks.blocks import cpu_kernel as kernel_module
from monai_medt.networks.blocks.attention_core import relative_attention
from monai_medt.networks.blocks.cpu_kernel import (
    KERNEL_ENV,
    FusedRelativeAttentionFunction,
    cpu_kernel,
    fused_relative_attention,
)
from tests.conftest import count_applies
from tests.networks.attention_inputs import attention_inputs, outputs_and_gradients


@pytest.fixture
def kernel():
    if os.environ.get(KERNEL_ENV) == "0":
        pytest.skip(f"{KERNEL_ENV}=0 disables the fused CPU kernel")
    module = cpu_kernel()
    assert module is not None, "the fused CPU attention kernel did not build (see the warning above)"
    return module


# (sequences, length, qk channels, value channels): 7 sequences split unevenly over the threads' chunks; lengths
# below, at and across the float path's row blocks (8 rows in AVX2 builds, 16 in AVX-512 builds); value channels in
# the forward's groups of 4 with remainders 3, 2, 1; the float backward's compiled channel counts (value channels
# twice the query channels: 1, 2, 4 and 8 query channels) and its general form
SHAPES = [(7, 11, 2, 4), (5, 5, 3, 6), (3, 19, 1, 3), (2, 8, 2, 9), (3, 16, 1, 2), (3, 37, 4, 8), (2, 20, 8, 16)]


def _scale(shape) -> float:
    """Input scale: the logits grow with the query channels; 2 keeps them at ~50 up to 3 channels, 1 above."""
    return 2.0 if shape[2] <= 3 else 1.0


@pytest.mark.parametrize("positional", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_matches_pytorch_values_and_gradients(kernel, positional, dtype, shape):
    """Outputs and all eight input gradients against the PyTorch implementation evaluated in float64."""
    inputs = attention_inputs(*shape, torch.float64, scale=_scale(shape))
    expected = relative_attention(*inputs, positional, 3)
    weights = [torch.randn_like(t) for t in expected]
    expected = outputs_and_gradients(expected, inputs, weights)
    cast = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
    result = outputs_and_gradients(fused_relative_attention(*cast, positional), cast, weights)
    names = ["sv", "sve", "q1", "k", "q2", "rq", "k3", "wk", "v", "rv"]
    for name, got, want in zip(names, result, expected):
        if want is None:  # position inputs of the non-positional variant
            assert got is None, name
            continue
        assert got.shape == want.shape, name
        # float32: the logits reach ~50 here, so the attention carries ~1e-6 relative error (as in PyTorch's softmax)
        scale = float(want.detach().abs().max()) if want.numel() else 1.0
        atol = 1e-12 if dtype == torch.float64 else 2e-6 * scale
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("positional", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_inference_forward_matches_pytorch(kernel, positional, shape, monkeypatch):
    """Without gradients the kernel's inference call runs (no softmax statistics kept), not the autograd function."""
    inputs = [t.detach() for t in attention_inputs(*shape, torch.float64, scale=_scale(shape))]
    expected = relative_attention(*inputs, positional, 3)

    def autograd_function(*args):
        raise AssertionError("the autograd function ran for an inference call")

    monkeypatch.setattr(FusedRelativeAttentionFunction, "apply", autograd_function)
    with torch.no_grad():
        result = fused_relative_attention(*[t.float() for t in inputs], positional)
    for name, got, want in zip(["sv", "sve"], result, expected):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        scale = float(want.abs().max()) if want.numel() else 1.0
        torch.testing.assert_close(got.double(), want, atol=2e-6 * scale, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() != "AVX512", reason="the AVX-512 build needs an AVX-512 CPU to compare with"
)
def test_avx2_build_matches_avx512_build(kernel, tmp_path):
    """
    The AVX-512 build's 16-row blocks and the AVX2 build's 8-row blocks compute each forward row in the same order, and
    their backward passes differ only in how the sums over rows are grouped: the two libraries agree (the AVX2 build is
    what AVX2-only CPUs run, so it is built here too).
    """
    avx2 = kernel_module._build("AVX2", str(tmp_path))
    assert "avx2" in os.path.basename(avx2.__file__) and "avx512" in os.path.basename(kernel.__file__)
    names = ["sv", "sve", "dq1", "dkt", "dvt", "dq2", "dk3t", "drq", "dwk", "drv"]
    for positional in (True, False):
        for shape in SHAPES + [(4, 64, 2, 4)]:
            inputs = [t.detach().float() for t in attention_inputs(*shape, torch.float64, scale=_scale(shape))]
            layout = kernel_module._kernel_layout(*inputs, positional)
            grads = [torch.randn(shape[0], shape[1], shape[3]) for _ in range(2)]
            if not positional:
                grads[1] = grads[1].new_empty(0)
            results = []
            for module in (avx2, kernel):
                stats = module.forward(*layout, positional)[2]
                backward = module.backward(*layout, positional, stats, *grads)
                results.append([*module.inference(*layout, positional), *backward])
            for name, got, want in zip(names, *results):
                atol = 1e-6 * float(want.abs().max()) if want.numel() else 0.0
                torch.testing.assert_close(got, want, atol=atol, rtol=0, msg=lambda m, n=name, s=shape: f"{s} {n}: {m}")


def test_fused_gradcheck(kernel):
    inputs = attention_inputs(3, 5, 1, 2, torch.float64)
    assert torch.autograd.gradcheck(lambda *a: fused_relative_attention(*a, True), inputs)


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_independent_of_thread_count(kernel, threads):
    """The position-table gradients are summed from per-chunk buffers: the sum must not depend on the split."""
    inputs = attention_inputs(9, 16, 2, 4, torch.float64)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = fused_relative_attention(*inputs, True)
        grads = torch.autograd.grad(out[0].sum() + 2 * out[1].sum(), inputs)
    finally:
        torch.set_num_threads(previous)
    expected = relative_attention(*inputs, True, 9)
    want = torch.autograd.grad(expected[0].sum() + 2 * expected[1].sum(), inputs)
    for got, ref in zip(grads, want):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-10)


def test_softmax_of_large_logits(kernel):
    """The kernel's exp is exact enough where the logits spread over hundreds (rows with one dominant key)."""
    inputs = attention_inputs(4, 16, 2, 2, torch.float32, scale=6.0)
    with torch.no_grad():
        expected = relative_attention(*inputs, True, 4)
        result = fused_relative_attention(*inputs, True)
    torch.testing.assert_close(result[0], expected[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result[1], expected[1], atol=1e-4, rtol=1e-4)


LAYERS = {
    "gated, height": (
        lambda: GatedAxialAttention(8, 16, kernel_size=16, num_heads=4, learnable_gates=True),
        (2, 8, 16, 12),
    ),
    "gated after norm, width": (
        lambda: GatedAxialAttention(
            8, 16, kernel_size=12, num_heads=4, axis="width", gate_position="after_norm", learnable_gates=True
        ),
        (2, 8, 16, 12),
    ),
    "axial, width, stride 2": (
        lambda: AxialAttention(8, 32, kernel_size=20, num_heads=4, axis="width", stride=2),
        (3, 8, 10, 20),
    ),
    "no positions, height": (lambda: AxialAttentionNoPos(8, 16, num_heads=2), (2, 8, 19, 6)),
    "no positions, width, stride 2": (
        lambda: AxialAttentionNoPos(6, 16, num_heads=8, axis="width", stride=2),
        (2, 6, 8, 16),
    ),
    # the output ReLU: in the output norm's pass at stride 1, after the pooling at stride 2
    "gated, width, output ReLU": (
        lambda: GatedAxialAttention(8, 16, kernel_size=12, num_heads=4, axis="width", output_relu=True),
        (2, 8, 16, 12),
    ),
    "no positions, width, stride 2, output ReLU": (
        lambda: AxialAttentionNoPos(6, 16, num_heads=8, axis="width", stride=2, output_relu=True),
        (2, 6, 8, 16),
    ),
}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_layer_uses_kernel_and_matches_pytorch_path(kernel, monkeypatch, layer_name, channels_last):
    """
    A training step of a layer gives the same output, gradients and running statistics with the kernel (its map form:
    queries, keys and values read in place from the projected map) and without it (the PyTorch implementation).
    """
    calls = count_applies(monkeypatch, kernel_module.FusedMapAttentionFunction)
    make, shape = LAYERS[layer_name]
    x = torch.randn(shape)
    if channels_last:  # the projection then is channels-last too: the kernel reads and writes through strides
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for setting in ("1", "0"):
        monkeypatch.setenv(KERNEL_ENV, setting)
        torch.manual_seed(3)
        layer = make().train()
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        # a weighting that differs per position and channel, so that no gradient vanishes by symmetry
        (out * torch.linspace(-1.0, 2.0, out.numel()).view_as(out)).pow(2).sum().backward()
        grads = [p.grad for p in layer.parameters() if p.grad is not None]
        results.append([out, xi.grad, *grads, *[b.float() for b in layer.buffers()]])
    assert len(calls) == 1, "the kernel must run when enabled and only then"
    assert len(results[0]) == len(results[1])
    for got, want in zip(*results):
        # float32 with different summation orders: the gate gradients sum over every position (rtol 1e-3); the floor
        # covers the output-norm shift, whose gradient is zero up to rounding (~1e-5 beside gradients of ~100-1000)
        torch.testing.assert_close(got, want, atol=max(1e-5 * float(want.detach().abs().max()), 1e-4), rtol=1e-3)


def test_build_failure_falls_back_with_a_warning(monkeypatch):
    def broken_build():
        raise OSError("no C++ compiler")

    monkeypatch.setattr(kernel_module, "_state", {})
    monkeypatch.setattr(kernel_module, "_build", broken_build)
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    with pytest.warns(UserWarning, match="could not be built.*no C\\+\\+ compiler"):
        assert cpu_kernel() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failure is reported once, not at every layer call
        assert cpu_kernel() is None
        layer = GatedAxialAttention(8, 8, kernel_size=8, num_heads=2)
        assert layer(torch.randn(1, 8, 8, 8)).shape == (1, 8, 8, 8)


def test_built_library_loads_without_the_build_tool(kernel):
    """A cached build is imported directly: no compiler run, no shared lock file that a killed process could leave."""
    code = (
        "import torch.utils.cpp_extension as c\n"
        "def no_build(*a, **k):\n"
        "    raise AssertionError('cpp_extension.load called although the library is cached')\n"
        "c.load = no_build\n"
        "from monai_medt.networks.blocks.cpu_kernel import _build\n"
        "print(_build().__file__)\n"
    )
    # a fresh process: the fixture's process may hold the module from its build folder
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = proc.stdout.strip().splitlines()[-1]
    assert os.path.basename(os.path.dirname(path)) == "monai_medt" and "-build-" not in path, path
