# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Run the GlaS bundle's training workflow from a precomputed cache of its deterministic preprocessing.

For a machine that cannot receive the full-resolution images (the lent GPU machine takes 64 MiB in all), ``export``
runs the deterministic part of the bundle's own ``train#preprocessing`` / ``validate#preprocessing`` (load, scale,
resize to ``img_size``; cut where CacheDataset cuts, at the first random transform) here and saves the items;
``train`` rebuilds the bundle config (train.json, plus multi_gpu_train.json with ``--multi_gpu`` under torchrun),
swaps in datasets over those items and applies only the random part of ``train#preprocessing``, then runs the
bundle's ``initialize`` / ``run`` / ``finalize`` sections. Model, loss, optimiser, handlers, checkpointing and AMP are
the bundle's.

    python scripts/glas_cache.py export --dataset_dir ../shared/data/glas --out .devcache/glas128.pt
    python scripts/glas_cache.py train --cache .devcache/glas128.pt --ckpt_dir runs/medt/models \\
        --output_dir runs/medt/eval --set epochs=400
    torchrun --standalone --nproc_per_node=1 scripts/glas_cache.py train --multi_gpu --cache ... --set epochs=2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging.config
import os

BUNDLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bundles", "medt_glas_segmentation")


def _parser(config_names: list[str], overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([os.path.join(BUNDLE, "configs", n) for n in config_names])
    parser.read_meta(os.path.join(BUNDLE, "configs", "metadata.json"))
    parser.update({"bundle_root": BUNDLE, **overrides})
    return parser


def _split_at_first_random(preprocessing) -> tuple[list, list]:
    """The transforms before the first random (or non-Transform) one, and the rest: CacheDataset's cut."""
    from monai.transforms import RandomizableTrait, Transform

    first = preprocessing.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
    transforms = list(preprocessing.transforms)
    return (transforms, []) if first is None else (transforms[:first], transforms[first:])


def export(dataset_dir: str, out: str, img_size: int, max_cases: int = 0) -> None:
    import torch
    from monai.transforms import Compose

    overrides = {"dataset_dir": dataset_dir, "img_size": img_size, "num_workers": 0, "max_cases": max_cases}
    parser = _parser(["train.json"], overrides)
    cache = {"img_size": img_size}
    for split, data, preprocessing in (
        ("train", "train_datalist", "train#preprocessing"),
        ("val", "val_datalist", "validate#preprocessing"),
    ):
        deterministic = Compose(_split_at_first_random(parser.get_parsed_content(preprocessing))[0])
        cache[split] = [deterministic(dict(item)) for item in parser.get_parsed_content(data)]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save(cache, out + ".tmp")
    os.replace(out + ".tmp", out)
    print(f"cached {len(cache['train'])} train / {len(cache['val'])} val items at {img_size} -> {out}")


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def train(cache_path: str, ckpt_dir: str, output_dir: str, multi_gpu: bool, sets: list[str]) -> None:
    import torch
    from monai.data import Dataset
    from monai.transforms import Compose, Lambda

    cache = torch.load(cache_path, weights_only=False)
    overrides = {"ckpt_dir": ckpt_dir, "output_dir": output_dir, "img_size": cache["img_size"], "num_workers": 0}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}.")
        overrides[key] = _value(value)
    if overrides["img_size"] != cache["img_size"]:
        raise ValueError(f"the cache holds img_size {cache['img_size']}, not {overrides['img_size']}.")
    configs = ["train.json"] + (["multi_gpu_train.json"] if multi_gpu else [])
    parser = _parser(configs, overrides)
    logging.config.fileConfig(os.path.join(BUNDLE, "configs", "logging.conf"), disable_existing_loggers=False)

    random_part = _split_at_first_random(parser.get_parsed_content("train#preprocessing"))[1]
    # each item is copied before the random transforms, as CacheDataset does, so the cache is never modified
    parser["train#dataset"] = Dataset(cache["train"], Compose([Lambda(copy.deepcopy), *random_part]))
    parser["validate#dataset"] = Dataset(cache["val"], Lambda(copy.deepcopy))
    for section in ("initialize", "run", "finalize"):
        if section in parser:
            parser.get_parsed_content(section, lazy=True, instantiate=True, eval_expr=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--dataset_dir", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--img_size", type=int, default=128)
    ex.add_argument("--max_cases", type=int, default=0, help="the bundle's max_cases (0: all)")
    tr = sub.add_parser("train")
    tr.add_argument("--cache", required=True)
    tr.add_argument("--ckpt_dir", required=True)
    tr.add_argument("--output_dir", required=True)
    tr.add_argument("--multi_gpu", action="store_true")
    tr.add_argument("--set", action="append", default=[], help="bundle override key=value (value parsed as JSON)")
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.dataset_dir, args.out, args.img_size, args.max_cases)
    else:
        train(args.cache, args.ckpt_dir, args.output_dir, args.multi_gpu, args.set)


if __name__ == "__main__":
    main()
