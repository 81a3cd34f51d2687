# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Port state dicts of the official MedT implementation (lib/models/axialnet.py) into the monai_medt networks."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import torch
import torch.nn as nn

from monai_medt.networks.nets.axial_unet import AxialUNet, GatedAxialUNet
from monai_medt.networks.nets.medt import LoGo, MedT

__all__ = ["OFFICIAL_FACTORIES", "convert_official_state_dict", "load_official"]

logger = logging.getLogger(__name__)

# official factory (and --modelname alias) -> our class
OFFICIAL_FACTORIES: dict[str, type[nn.Module]] = {
    "axialunet": AxialUNet,
    "gated": GatedAxialUNet,
    "gatedaxialunet": GatedAxialUNet,
    "MedT": MedT,
    "logo": LoGo,
}

# official gate scalars -> index in our ``gates`` vector
_GATE_INDEX = {"f_qr": 0, "f_kr": 1, "f_sv": 2, "f_sve": 3}

_BLOCK_PARTS = {
    "conv_down": "conv_in",
    "bn1": "norm_in",
    "hight_block": "attn_h",
    "width_block": "attn_w",
    "conv_up": "conv_out",
    "bn2": "norm_out",
    "downsample": "shortcut",
}
_ATTN_PARTS = {"qkv_transform": "qkv", "bn_qkv": "qkv_norm", "bn_similarity": "logit_norm", "bn_output": "out_norm"}
_STEM_PARTS = {"conv1": "conv1", "bn1": "norm1", "conv2": "conv2", "bn2": "norm2", "conv3": "conv3", "bn3": "norm3"}


def _check_factory(factory: str) -> str:
    if factory not in OFFICIAL_FACTORIES:
        raise ValueError(f"unknown official factory '{factory}', expected one of {sorted(OFFICIAL_FACTORIES)}.")
    return factory


def _is_local_global(factory: str) -> bool:
    return factory in ("MedT", "logo")


def _rename_block(rest: str) -> str | None:
    """``conv_down.weight`` / ``hight_block.bn_qkv.weight`` ... inside one block -> our name, None for dead keys."""
    part, _, tail = rest.partition(".")
    if part not in _BLOCK_PARTS:
        return None  # conv1 of the no-position blocks is built but never used
    new = _BLOCK_PARTS[part]
    if part in ("hight_block", "width_block"):
        sub, _, leaf = tail.partition(".")
        if sub == "flatten_index":
            return None  # an index buffer we rebuild from the size
        if sub == "relative":
            return f"{new}.relative"
        if sub not in _ATTN_PARTS:
            return None
        return f"{new}.{_ATTN_PARTS[sub]}.{leaf}"
    return f"{new}.{tail}"


def _rename(key: str, factory: str) -> str | None:
    local_global = _is_local_global(factory)
    m = re.fullmatch(r"(conv[123]|bn[123])(_p)?\.(.+)", key)
    if m:
        if m.group(2) and not local_global:
            return None
        stem = ("local_stem" if m.group(2) else "global_stem") if local_global else "stem"
        return f"{stem}.{_STEM_PARTS[m.group(1)]}.{m.group(3)}"
    m = re.fullmatch(r"layer(\d)(_p)?\.(\d+)\.(.+)", key)
    if m:
        stage = int(m.group(1)) - 1
        prefix = ("local_stages" if m.group(2) else "global_stages") if local_global else "stages"
        tail = _rename_block(m.group(4))
        return None if tail is None else f"{prefix}.{stage}.{m.group(3)}.{tail}"
    m = re.fullmatch(r"decoder(\d|f)(_p)?\.(.+)", key)
    if m:
        if m.group(1) == "f":
            return f"fusion.{m.group(3)}"
        index = int(m.group(1)) - 1
        if local_global and not m.group(2):
            return f"global_decoder.convs.{index - 3}.{m.group(3)}"  # the global branch keeps decoder4, decoder5
        prefix = "local_decoder" if local_global else "decoder"
        return f"{prefix}.convs.{index}.{m.group(3)}"
    m = re.fullmatch(r"adjust\.(.+)", key)
    if m:
        return f"head.{m.group(1)}"
    return None  # adjust_p and anything else the official forward never uses


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], factory: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """
    Convert a state dict of the official implementation into the key layout of the matching monai_medt network.

    Args:
        state_dict: official state dict; a DataParallel ``module.`` prefix is removed.
        factory: official factory name: ``"axialunet"``, ``"gated"`` (or ``"gatedaxialunet"``), ``"MedT"``, ``"logo"``.

    Returns:
        the converted state dict and the sorted list of official keys that were dropped because the official forward
        never uses them (the no-position blocks' ``conv1``, ``adjust_p``) or they are rebuilt (``flatten_index``).
    """
    _check_factory(factory)
    converted: dict[str, torch.Tensor] = {}
    gates: dict[str, dict[int, torch.Tensor]] = {}
    dropped: list[str] = []
    for raw_key, value in state_dict.items():
        key = raw_key[len("module.") :] if raw_key.startswith("module.") else raw_key
        gate = re.fullmatch(r"(.+)\.(f_qr|f_kr|f_sv|f_sve)", key)
        if gate:
            owner = _rename(gate.group(1) + ".relative", factory)
            if owner is None:
                dropped.append(raw_key)
                continue
            gates.setdefault(owner[: -len(".relative")], {})[_GATE_INDEX[gate.group(2)]] = value
            continue
        new_key = _rename(key, factory)
        if new_key is None:
            dropped.append(raw_key)
            continue
        if new_key.endswith("qkv.weight") and value.dim() == 3:
            value = value.unsqueeze(-1)  # Conv1d (2C, C, 1) -> 1x1 Conv2d (2C, C, 1, 1)
        converted[new_key] = value
    for owner, values in gates.items():
        if sorted(values) != [0, 1, 2, 3]:
            raise ValueError(f"official state dict has an incomplete gate set for {owner}: {sorted(values)}.")
        converted[f"{owner}.gates"] = torch.stack([values[i].reshape(()) for i in range(4)]).float()
    return converted, sorted(dropped)


def load_official(
    factory: str,
    state_dict: Mapping[str, torch.Tensor],
    img_size: int | tuple[int, int] = 128,
    in_channels: int = 3,
    out_channels: int = 2,
) -> nn.Module:
    """
    Build the monai_medt network for an official factory name and load an official state dict into it.

    The network is built with the official widths (the defaults of our classes). Loading is strict: a key that is
    neither converted nor a known dead parameter, or a shape that does not match, raises an error. The dropped
    official keys are logged at INFO level.

    Args:
        factory: ``"axialunet"``, ``"gated"`` (or ``"gatedaxialunet"``), ``"MedT"`` or ``"logo"``.
        state_dict: the official state dict (``torch.load`` of a checkpoint saved by the official train.py).
        img_size: the official ``img_size`` the weights were trained for. Defaults to 128.
        in_channels: the official ``imgchan``. Defaults to 3.
        out_channels: the official ``num_classes``. Defaults to 2.

    Example::

        >>> sd = torch.load("medt_glas.pth", map_location="cpu")
        >>> net = load_official("MedT", sd, img_size=128, in_channels=3, out_channels=2).eval()
    """
    net_type = OFFICIAL_FACTORIES[_check_factory(factory)]
    net = net_type(in_channels=in_channels, out_channels=out_channels, img_size=img_size)
    converted, dropped = convert_official_state_dict(state_dict, factory)
    ours = net.state_dict()
    missing = [k for k in ours if k not in converted]
    unexpected = [k for k in converted if k not in ours]
    mismatched = [
        f"{k}: {tuple(v.shape)} vs {tuple(ours[k].shape)}"
        for k, v in converted.items()
        if k in ours and v.shape != ours[k].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"official '{factory}' state dict does not fit {net_type.__name__}(in_channels={in_channels}, "
            f"out_channels={out_channels}, img_size={img_size}): {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(mismatched)} shape mismatches "
            f"(official vs ours) {mismatched[:3]}; check the factory name and the in_channels/out_channels/img_size "
            "the weights were trained with."
        )
    net.load_state_dict(converted)
    if dropped:
        logger.info("load_official(%s): dropped %d unused official entries: %s", factory, len(dropped), dropped)
    return net
