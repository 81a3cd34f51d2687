# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""Helpers for the bundles' config expressions: settings given on the command line, checked before a run starts."""

from __future__ import annotations

from collections.abc import Sequence

from monai.utils import str2bool

__all__ = ["flag", "require_choice"]


def flag(name: str, value: bool | str) -> bool:
    """
    The boolean setting ``name``. ``python -m monai.bundle run --amp false`` passes the string ``'false'``, which
    Python would take as true; this reads ``true/false, yes/no, t/f, y/n, 1/0`` (any case) and booleans.

    Raises:
        ValueError: any other value, naming the setting.

    Example::

        >>> flag("amp", "false"), flag("amp", True)
        (False, True)
    """
    try:
        return str2bool(value)
    except ValueError:
        raise ValueError(f"{name} must be true or false, got {value!r}.") from None


def require_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming the setting ``name`` and the choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value
