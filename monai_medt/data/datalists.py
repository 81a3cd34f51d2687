# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
Datalists (lists of ``{"image": path, "label": path, ...}`` dicts, as MONAI datasets take them) for the layouts users
have: the MedT ``img/`` + ``labelcol/`` folders, the official GlaS release, MoNuSeg (XML polygons or ready masks) and
MONAI's decathlon-style JSON. Problems are reported by file name before any training starts.
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "medt_datalist",
    "glas_datalist",
    "monuseg_datalist",
    "rasterize_monuseg_xml",
    "decathlon_datalist",
    "split_train_val",
    "read_names",
    "volume_datalist",
]

IMAGE_EXTENSIONS = (
    ".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg",
    ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm",
)
GLAS_SUBSETS = ("train", "testA", "testB", "test")


def _extension(name: str) -> str:
    lower = name.lower()
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return ext
    return os.path.splitext(lower)[1]


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def _listing(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    unknown = [n for n in names if _extension(n) not in IMAGE_EXTENSIONS]
    if unknown:
        raise ValueError(
            f"unsupported file extension in {folder}: {unknown[:5]} (supported: {', '.join(IMAGE_EXTENSIONS)})."
        )
    return names


def medt_datalist(root: str | os.PathLike, image_dir: str = "img", label_dir: str = "labelcol") -> list[dict]:
    """
    Pair ``root/img/<name>`` with ``root/labelcol/<name>`` (the layout of the official MedT code).

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: a file has an unsupported extension, or an image has no mask (or a mask no image); the message
            lists the names.

    Example::

        >>> train = medt_datalist("../shared/data/glas/train")
        >>> train[0]
        {'image': '.../img/train_1.png', 'label': '.../labelcol/train_1.png', 'name': 'train_1'}
    """
    root = Path(root)
    images = _listing(_require_dir(root / image_dir, "image"))
    labels = _listing(_require_dir(root / label_dir, "label"))
    only_images, only_labels = sorted(set(images) - set(labels)), sorted(set(labels) - set(images))
    if only_images or only_labels:
        raise ValueError(
            f"unpaired files under {root}: images without a mask in {label_dir}/: {only_images[:10]}; "
            f"masks without an image in {image_dir}/: {only_labels[:10]}."
        )
    if not images:
        raise ValueError(f"no images found in {root / image_dir}.")
    return [
        {
            "image": str(root / image_dir / n),
            "label": str(root / label_dir / n),
            "name": n[: -len(_extension(n))] if _extension(n) else n,
        }
        for n in sorted(images, key=_natural_key)
    ]


def _natural_key(name: str) -> tuple:
    """train_2 before train_10."""
    parts, digits = [], ""
    for ch in name:
        if ch.isdigit():
            digits += ch
            continue
        if digits:
            parts.append(int(digits))
            digits = ""
        parts.append(ch)
    if digits:
        parts.append(int(digits))
    return tuple((0, p) if isinstance(p, int) else (1, p) for p in parts)


def glas_datalist(root: str | os.PathLike, subset: str = "train") -> list[dict]:
    """
    Datalist of the official GlaS release (``Warwick QU Dataset (Released 2016_07_08)``): ``train_N.bmp`` with instance
    masks ``train_N_anno.bmp``, ``testA_N`` / ``testB_N`` likewise, and ``Grade.csv`` (benign / malignant), all in one
    folder. Labels are instance ids; use :class:`monai_medt.transforms.BinaryMaskd` with ``mode="instance"`` to make
    them binary.

    Args:
        root: folder of the release.
        subset: ``"train"``, ``"testA"``, ``"testB"`` or ``"test"`` (A and B). Defaults to ``"train"``.

    Raises:
        FileNotFoundError: the folder is missing. ValueError: unknown subset, no images, or missing masks (named).
    """
    root = _require_dir(Path(root), "GlaS")
    if subset not in GLAS_SUBSETS:
        raise ValueError(f"subset must be one of {GLAS_SUBSETS}, got {subset!r}.")
    prefixes = ("testA_", "testB_") if subset == "test" else (f"{subset}_",)
    files = {p.name for p in root.iterdir() if p.is_file()}
    images = [
        n for n in files
        if n.startswith(prefixes) and not n.lower().endswith("_anno.bmp") and _extension(n) in IMAGE_EXTENSIONS
    ]
    if not images:
        raise ValueError(f"no GlaS images with prefix {prefixes} in {root}.")
    grades = _read_glas_grades(root / "Grade.csv")
    missing, items = [], []
    for n in sorted(images, key=_natural_key):
        stem = n[: -len(_extension(n))]
        label = f"{stem}_anno{_extension(n)}"
        if label not in files:
            missing.append(label)
            continue
        item = {"image": str(root / n), "label": str(root / label), "name": stem}
        if stem in grades:
            item["grade"] = grades[stem]
        items.append(item)
    if missing:
        raise ValueError(f"GlaS masks missing in {root}: {missing[:10]}.")
    return items


def _read_glas_grades(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    name_col = header.index("name") if "name" in header else 0
    grade_col = next((i for i, h in enumerate(header) if h.startswith("grade")), len(header) - 1)
    return {r[name_col].strip(): r[grade_col].strip() for r in rows[1:] if len(r) > max(name_col, grade_col)}


def rasterize_monuseg_xml(xml_path: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """
    Rasterise a MoNuSeg (Aperio ImageScope) XML annotation into an instance mask of shape (height, width): every
    ``Region`` polygon (``Vertex X= Y=``) gets its own id (1, 2, ...); later regions overwrite earlier ones.

    Raises:
        ValueError: the XML cannot be parsed or holds no region (the message names the file).
    """
    from PIL import Image, ImageDraw

    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError) as e:
        raise ValueError(f"cannot read MoNuSeg annotation {xml_path}: {e}") from e
    regions = tree.getroot().findall(".//Region")
    if not regions:
        raise ValueError(f"MoNuSeg annotation {xml_path} contains no <Region> polygons.")
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for index, region in enumerate(regions, start=1):
        points = [(float(v.get("X")), float(v.get("Y"))) for v in region.findall(".//Vertex")]
        if len(points) >= 3:
            draw.polygon(points, fill=index, outline=index)
    return np.array(canvas, dtype=np.int32)


def monuseg_datalist(
    root: str | os.PathLike, mask_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> list[dict]:
    """
    Datalist of MoNuSeg: ``.tif`` tiles under ``root`` (or ``root/Tissue Images``) with XML annotations of the same
    stem (under ``root`` or ``root/Annotations``), rasterised once into 16-bit instance PNGs in ``cache_dir``
    (default ``root/masks_rasterized``); or ready masks of the same stem in ``mask_dir``.

    Raises:
        FileNotFoundError: a folder is missing. ValueError: a tile has no annotation / mask (named) or an XML is bad.
    """
    from PIL import Image

    root = _require_dir(Path(root), "MoNuSeg")
    image_root = root / "Tissue Images" if (root / "Tissue Images").is_dir() else root
    xml_root = root / "Annotations" if (root / "Annotations").is_dir() else root
    tiles = sorted(p for p in image_root.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png"))
    if not tiles:
        raise ValueError(f"no MoNuSeg tiles (.tif) in {image_root}.")
    items, missing = [], []
    if mask_dir is not None:
        masks = {p.stem: p for p in _require_dir(Path(mask_dir), "mask").iterdir() if p.is_file()}
        for tile in tiles:
            if tile.stem not in masks:
                missing.append(tile.name)
                continue
            items.append({"image": str(tile), "label": str(masks[tile.stem]), "name": tile.stem})
    else:
        cache = Path(cache_dir) if cache_dir is not None else root / "masks_rasterized"
        for tile in tiles:
            xml = xml_root / f"{tile.stem}.xml"
            if not xml.is_file():
                missing.append(f"{tile.stem}.xml")
                continue
            out = cache / f"{tile.stem}.png"
            if not out.is_file():
                with Image.open(tile) as im:
                    width, height = im.size
                mask = rasterize_monuseg_xml(xml, height, width)
                cache.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".tmp.png")
                Image.fromarray(mask.astype(np.uint16)).save(tmp)
                os.replace(tmp, out)  # never leave a half-written mask behind
            items.append({"image": str(tile), "label": str(out), "name": tile.stem})
    if missing:
        raise ValueError(f"MoNuSeg tiles without annotation under {root}: {missing[:10]}.")
    return items


def decathlon_datalist(
    json_path: str | os.PathLike, key: str = "training", base_dir: str | os.PathLike | None = None
) -> list[dict]:
    """
    Read a MONAI / Medical Segmentation Decathlon datalist JSON (``monai.data.load_decathlon_datalist``) and check
    that every referenced file exists (missing ones are listed by key and path).
    """
    from monai.data import load_decathlon_datalist

    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"datalist not found: {json_path}")
    try:
        items = load_decathlon_datalist(str(json_path), is_segmentation=True, data_list_key=key, base_dir=base_dir)
    except ValueError as e:
        raise ValueError(f"{json_path}: {e}") from e
    missing = [
        f"{k}={v}" for item in items for k, v in item.items() if k in ("image", "label") and not _exists(v)
    ]
    if missing:
        raise FileNotFoundError(f"files referenced by {json_path}[{key!r}] do not exist: {missing[:10]}")
    return items


def _exists(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_exists(v) for v in value)
    return os.path.exists(value)


def split_train_val(
    datalist: Sequence[dict],
    val_fraction: float = 0.1,
    seed: int = 0,
    val_names: Sequence[str] | None = None,
) -> tuple[list[dict], list[dict]]:
    """
    Deterministic validation split taken from a training datalist: the same ``seed`` gives the same split whatever
    the input order, or ``val_names`` picks the validation items by their ``name`` (e.g. GlaS ``repo_val_split.txt``).

    Raises:
        ValueError: fraction outside (0, 1), a split that leaves either side empty, or unknown ``val_names``.
    """
    items = sorted(datalist, key=lambda d: _natural_key(str(d.get("name", d["image"]))))
    if val_names is not None:
        wanted = {str(n) for n in val_names}
        known = {str(d.get("name")) for d in items}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(f"val_names not in the datalist: {unknown[:10]}.")
        val = [d for d in items if str(d.get("name")) in wanted]
        train = [d for d in items if str(d.get("name")) not in wanted]
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
        n_val = int(round(len(items) * val_fraction))
        if n_val == 0 or n_val == len(items):
            raise ValueError(f"val_fraction {val_fraction} of {len(items)} items leaves an empty split.")
        order = np.random.default_rng(seed).permutation(len(items))
        val_idx = set(order[:n_val].tolist())
        val = [d for i, d in enumerate(items) if i in val_idx]
        train = [d for i, d in enumerate(items) if i not in val_idx]
    if not train or not val:
        raise ValueError("the split leaves the training or the validation set empty.")
    return train, val


def read_names(path: str | os.PathLike) -> list[str] | None:
    """Case names listed one per line (extensions dropped), or None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [n[: -len(_extension(n))] if _extension(n) in IMAGE_EXTENSIONS else n for n in names]


VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def volume_datalist(folder: str | os.PathLike, max_cases: int = 0) -> list[dict]:
    """
    Inference datalist of a folder of volumes: NIfTI / NRRD / MetaImage files, and sub-folders holding a DICOM series
    (read by ITK). Raises ``FileNotFoundError`` / ``ValueError`` naming the folder when it is missing or empty.
    """
    folder = _require_dir(Path(folder), "input")
    items = []
    for p in sorted(folder.iterdir(), key=lambda q: _natural_key(q.name)):
        if p.is_file() and _extension(p.name) in VOLUME_EXTENSIONS:
            items.append({"image": str(p), "name": p.name[: -len(_extension(p.name))]})
        elif p.is_dir() and any(f.is_file() for f in p.iterdir()):
            items.append({"image": str(p), "name": p.name})  # a DICOM series
    if not items:
        raise ValueError(f"no volumes ({', '.join(VOLUME_EXTENSIONS)}) or DICOM series folders in {folder}.")
    return items[:max_cases] if max_cases else items
