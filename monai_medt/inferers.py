# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Test-time augmentation over the flips and 90-degree turns of 2D windows, wrapped around any MONAI inferer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["DihedralTTAInferer"]


class DihedralTTAInferer(Inferer):
    """
    Runs ``inferer`` with a network that sees every window under the symmetries of the square (the identity, three
    90-degree turns and their mirror images: eight views) or, with ``rotations=False``, under the flips alone (the
    identity, the two axis flips and the 180-degree turn: four views), maps each output back and returns their mean.
    The views of one window go through the network as one batch.

    The wrapped network must take and return (batch, channels, height, width) tensors, as MedT does; the outputs are
    averaged as they come (logits for the networks in this package, so a softmax afterwards acts on the mean logits).
    Eight views cost eight forward passes: use it where a model was trained with these symmetries (GlaS bundle's
    ``--strong_augmentation true``) and choose it on validation data, as any other setting.

    Args:
        inferer: the inferer to wrap, e.g. a ``SlidingWindowInferer`` with square ``roi_size``. Defaults to
            ``SimpleInferer()``.
        rotations: add the 90-degree turns (square windows only). Defaults to True.

    Examples::

        >>> from monai.inferers import SlidingWindowInferer
        >>> from monai_medt.networks import MedT
        >>> net = MedT(in_channels=3, out_channels=2, img_size=32).eval()
        >>> inferer = DihedralTTAInferer(SlidingWindowInferer(roi_size=(32, 32)))
        >>> with torch.no_grad():
        ...     inferer(torch.rand(1, 3, 48, 40), net).shape
        torch.Size([1, 2, 48, 40])
    """

    def __init__(self, inferer: Inferer | None = None, rotations: bool = True) -> None:
        super().__init__()
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.rotations = rotations
        # (quarter turns, mirrored first); without the odd turns, {0, 2} x {plain, mirrored} is the four flips
        turns = (0, 1, 2, 3) if rotations else (0, 2)
        self.views = [(k, mirror) for k in turns for mirror in (False, True)]

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """
        Args:
            inputs: the input of ``inferer``.
            network: the model, called on (batch, channels, height, width) windows.
            args, kwargs: passed on to ``inferer`` (and from there to ``network``).
        """

        def views_network(window: torch.Tensor, *net_args: Any, **net_kwargs: Any) -> torch.Tensor:
            if window.ndim != 4:
                raise ValueError(
                    f"DihedralTTAInferer needs (batch, channels, height, width) network inputs, got shape "
                    f"{tuple(window.shape)}."
                )
            if self.rotations and window.shape[-1] != window.shape[-2]:
                raise ValueError(
                    f"90-degree turns need square windows, got {tuple(window.shape[-2:])}: use a square roi_size "
                    "or rotations=False."
                )
            batch = window.shape[0]
            stacked = torch.cat([self._forward_view(window, k, mirror) for k, mirror in self.views])
            outputs = network(stacked, *net_args, **net_kwargs)
            if not isinstance(outputs, torch.Tensor) or outputs.ndim != 4 or outputs.shape[0] != stacked.shape[0]:
                raise ValueError(
                    "DihedralTTAInferer needs a network that returns one (batch, channels, height, width) tensor, "
                    f"got {type(outputs).__name__} {tuple(getattr(outputs, 'shape', ()))}."
                )
            total = torch.zeros_like(outputs[:batch])
            for i, (k, mirror) in enumerate(self.views):
                total += self._inverse_view(outputs[i * batch : (i + 1) * batch], k, mirror)
            return total / len(self.views)

        return self.inferer(inputs, views_network, *args, **kwargs)

    @staticmethod
    def _forward_view(x: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
        x = torch.flip(x, dims=(-1,)) if mirror else x
        return torch.rot90(x, k, dims=(-2, -1)) if k else x

    @staticmethod
    def _inverse_view(y: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
        y = torch.rot90(y, -k, dims=(-2, -1)) if k else y
        return torch.flip(y, dims=(-1,)) if mirror else y
