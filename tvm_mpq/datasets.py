"""Offline evaluation and calibration data for tvm_mpq's bundled models.

Why this module: nothing may download at run time, so the data comes from two places only —
the project's shared data directory (``../shared/data`` beside the repository, or
``$TVM_MPQ_DATA``: an ImageNet sample and the STS-Benchmark dev split), and the RGB photos that
ship inside scikit-image's package (the demo's default calibration images when the shared data
is absent). Readers return plain numpy arrays in the layout the models take (NCHW float32).
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "shared_data_dir",
    "imagenet_sample",
    "bundled_images",
    "sts_dev",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_IMAGENET_DIR = "imagenet-sample-256"
_STS_FILE = "sts-dev.csv"
# Natural RGB photos in skimage/data that ship with the wheel (no pooch download). Grayscale,
# synthetic (chessboard, phantom), RGBA silhouettes and the stereo twin motorcycle_right are left
# out.
_SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "color.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)


def shared_data_dir() -> Path | None:
    """``$TVM_MPQ_DATA`` if set, else ``<repo root>/../shared/data``; None if it does not exist."""
    env = os.environ.get("TVM_MPQ_DATA")
    if env:
        p = Path(env)
    else:
        repo_root = Path(__file__).resolve().parent.parent  # parent of the tvm_mpq package
        p = repo_root.parent / "shared" / "data"
    return p if p.is_dir() else None


def _require(name: str) -> Path:
    d = shared_data_dir()
    where = os.environ.get("TVM_MPQ_DATA") or "../shared/data (beside the repository)"
    if d is None or not (d / name).exists():
        raise FileNotFoundError(
            f"{name} not found in the shared data directory {where}; set TVM_MPQ_DATA to the "
            "directory holding imagenet-sample-256/ and sts-dev.csv"
        )
    return d / name


def _to_tensor(img, mean, std) -> np.ndarray:
    """HWC uint8 PIL image -> CHW float32 in [0, 1], normalised."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def _center_crop(img, size: int):
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop {size}")
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def imagenet_sample(
    limit: int | None = None,
    offset: int = 0,
    size: int = 224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [N, 3, size, size], labels int64 [N]) from the shared ImageNet sample.

    Images (256x256) are taken in file-name order from ``offset``, centre-cropped to ``size``,
    scaled to [0, 1] and normalised. FileNotFoundError if the shared data is absent.
    """
    from PIL import Image

    d = _require(_IMAGENET_DIR)
    labels_path = d / "labels.tsv"
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path} is missing")
    with open(labels_path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    table = {r["file"]: int(r["class_index"]) for r in rows}
    files = sorted(table)
    files = files[offset:] if limit is None else files[offset : offset + limit]
    xs = np.empty((len(files), 3, size, size), np.float32)
    for i, name in enumerate(files):
        with Image.open(d / name) as img:
            xs[i] = _to_tensor(_center_crop(img, size), mean, std)
    return xs, np.array([table[n] for n in files], dtype=np.int64)


def _skimage_data_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "data"
    return d if d.is_dir() else None


def bundled_images(size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """float32 [N, 3, size, size]: the RGB photos inside scikit-image's package data.

    Each is resized so its short side is ``round(size * 256 / 224)`` (bicubic), then
    centre-cropped to ``size`` and normalised: the demo's default calibration set.
    """
    from PIL import Image

    d = _skimage_data_dir()
    if d is None:
        raise FileNotFoundError(
            "scikit-image's data directory was not found: pip install scikit-image"
        )
    short = int(round(size * 256 / 224))
    out = []
    for name in _SKIMAGE_PHOTOS:
        p = d / name
        if not p.is_file():
            continue
        with Image.open(p) as img:
            if img.mode != "RGB":
                continue
            w, h = img.size
            s = short / min(w, h)
            img = img.resize((max(short, round(w * s)), max(short, round(h * s))), Image.BICUBIC)
            out.append(_to_tensor(_center_crop(img, size), mean, std))
    if not out:
        raise FileNotFoundError(f"none of {_SKIMAGE_PHOTOS} found in {d}")
    return np.stack(out)


def sts_dev(limit: int | None = None) -> list[tuple[str, str, float]]:
    """STS-Benchmark dev pairs as (sentence1, sentence2, gold score 0-5), in file order.

    The file is tab-separated with unbalanced quotes inside sentences, so it is read with
    ``csv.QUOTE_NONE``; all 1500 rows must parse.
    """
    path = _require(_STS_FILE)
    pairs: list[tuple[str, str, float]] = []
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row:
                continue
            if len(row) < 7:
                raise ValueError(
                    f"{path}:{lineno}: expected >= 7 tab-separated fields, got {len(row)}"
                )
            pairs.append((row[5], row[6], float(row[4])))
    if len(pairs) != 1500:
        raise ValueError(f"{path}: expected 1500 STS dev pairs, parsed {len(pairs)}")
    return pairs if limit is None else pairs[:limit]
