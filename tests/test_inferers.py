# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""DihedralTTAInferer: the mean over the views, mapped back, is equivariant whatever the network."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from monai_medt.inferers import DihedralTTAInferer


def _turn(x: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    x = torch.flip(x, dims=(-2,)) if mirror else x  # mirrored along the other axis than the inferer's own views
    return torch.rot90(x, k, dims=(-2, -1))


@pytest.mark.parametrize("rotations", [True, False])
def test_output_follows_the_input_symmetry(rotations):
    net = nn.Conv2d(2, 3, 3, padding=1).double()  # a random 3x3 kernel: neither flip- nor turn-invariant
    inferer = DihedralTTAInferer(rotations=rotations)
    x = torch.rand(2, 2, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        reference = inferer(x, net)
        assert not torch.allclose(reference, net(x))  # the views changed the result
        for k in (0, 1, 2, 3) if rotations else (0, 2):
            for mirror in (False, True):
                out = inferer(_turn(x, k, mirror), net)
                torch.testing.assert_close(out, _turn(reference, k, mirror))


def test_symmetric_network_is_unchanged_and_batch_kept_apart():
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64)
    net = nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
    net.weight.data = kernel.view(1, 1, 3, 3)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(DihedralTTAInferer()(x, net), net(x))


def test_wraps_sliding_windows_on_non_square_images():
    calls = []

    def net(window):
        calls.append(tuple(window.shape))
        return window[:, :1] * 2

    x = torch.rand(1, 3, 20, 13)
    out = DihedralTTAInferer(SlidingWindowInferer(roi_size=(8, 8), sw_batch_size=2))(x, net)
    torch.testing.assert_close(out, x[:, :1] * 2)
    assert calls and all(c[1:] == (3, 8, 8) and c[0] % 8 == 0 for c in calls)  # each window batch in its 8 views


def test_clear_errors():
    net = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match=r"square windows, got \(8, 6\)"):
        DihedralTTAInferer()(torch.rand(1, 1, 8, 6), net)
    assert DihedralTTAInferer(rotations=False)(torch.rand(1, 1, 8, 6), net).shape == (1, 1, 8, 6)
    with pytest.raises(ValueError, match=r"got shape \(1, 1, 4, 4, 4\)"):
        DihedralTTAInferer()(torch.rand(1, 1, 4, 4, 4), nn.Conv3d(1, 1, 1))
    with pytest.raises(ValueError, match="returns one"):
        DihedralTTAInferer()(torch.rand(1, 1, 4, 4), lambda x: {"pred": x})
