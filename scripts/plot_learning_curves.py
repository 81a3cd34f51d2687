# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Learning curves of bundle training runs from their TensorBoard logs (the bundles' ``output_dir``): training loss
(mean per epoch) and validation mean Dice, one line per run.

    python scripts/plot_learning_curves.py --run MedT=runs/medt/eval --run UNet=runs/unet/eval --out curves.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def read_scalars(log_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (steps, values) from every event file in ``log_dir`` (later files win on repeated steps: resumed runs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(log_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise ValueError(f"no TensorBoard event files in {log_dir}")
    merged: dict[str, dict[int, float]] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            merged.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return {t: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for t, v in merged.items()}


def iterations_per_epoch(scalars: dict[str, tuple[np.ndarray, np.ndarray]], log_dir: Path) -> int:
    """
    The run's own iterations per epoch: the bundles log ``train_loss`` per iteration and the trainer's
    ``train_mean_dice`` per epoch, both on global steps, so the last of each divide.
    """
    if "train_mean_dice" not in scalars:
        raise ValueError(f"{log_dir}: no per-epoch train_mean_dice to count epochs by; pass --iters-per-epoch")
    last_iteration, last_epoch = int(scalars["train_loss"][0].max()), int(scalars["train_mean_dice"][0].max())
    per_epoch, rest = divmod(last_iteration, last_epoch)
    if rest or not per_epoch:
        raise ValueError(
            f"{log_dir}: {last_iteration} iterations in {last_epoch} epochs is not a whole number per epoch (a run "
            "stopped within an epoch?); pass --iters-per-epoch"
        )
    return per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="NAME=LOG_DIR (repeat)")
    parser.add_argument(
        "--iters-per-epoch", type=int, help="training iterations per epoch (default: read from each run's logs)"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    for spec in args.run:
        name, _, log_dir = spec.partition("=")
        scalars = read_scalars(Path(log_dir))
        steps, loss = scalars["train_loss"]
        epochs = (steps - 1) // (args.iters_per_epoch or iterations_per_epoch(scalars, Path(log_dir))) + 1
        per_epoch = [loss[epochs == e].mean() for e in np.unique(epochs)]
        (line,) = ax_loss.plot(np.unique(epochs), per_epoch, marker=".", markersize=3, label=name)
        if "val_mean_dice" in scalars:  # same colour per run in both panels
            ax_dice.plot(*scalars["val_mean_dice"], marker=".", label=name, color=line.get_color())
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="training loss (mean per epoch)")
    ax_dice.set(xlabel="epoch", ylabel="mean Dice (gland)", title="validation Dice (held-out training images)")
    ax_dice.set_ylim(0, 1)
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
