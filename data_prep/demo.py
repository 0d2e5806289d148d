"""The demo datasets: real photographs bundled with scikit-image, no download.

The photos are downscaled (MATLAB bicubic) so their longer side is at most DEMO_MAX_SIDE px,
saved as PNG under `root/demo_photos`, and built like any image folder: x2/x3/x4 SR and
sigma-25 denoising, with train sub-images (DEMO_SUB px every DEMO_STEP px) and a held-out
val split of whole images. Greyscale photos become 3-channel RGB on load.

DEGRADATION_SETS (for on-the-fly degradation and task mixtures) are built on first use
(`demo:<key>` in a config), in-process, in a few seconds: `hr` (HR-only train shards for
on-the-fly degradation), fixed val sets per level
(denoise_s15/s50, jpeg_q10..q40; denoise_s25 is a DEMO_SETS entry) and synthetic stand-ins for the
all-in-one tasks (`*_synth`, train + val, labelled `synthetic_stand_in` in their manifests).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from hiir.data_prep.build import build_dataset, ray_session
from hiir.data_prep.degrade import to_uint8
from hiir.data_prep.errors import DatasetError
from hiir.data_prep.files import atomic_path
from hiir.data_prep.imresize import imresize
from hiir.data_prep.manifest import load_manifest

DEMO_MAX_SIDE, DEMO_SUB, DEMO_STEP = 256, 96, 48  # 96 and 48 divide by 2, 3 and 4
# skimage.data loaders that ship inside the wheel (checked offline with scikit-image 0.26).
DEMO_PHOTOS = {
    "astronaut": "astronaut", "chelsea": "chelsea", "coffee": "coffee", "rocket": "rocket",
    "hubble": "hubble_deep_field", "retina": "retina", "ihc": "immunohistochemistry",
    "camera": "camera", "brick": "brick", "grass": "grass", "gravel": "gravel",
    "moon": "moon", "coins": "coins", "clock": "clock", "motorcycle": "stereo_motorcycle",
}
DEMO_VAL = ("chelsea", "coins", "rocket")  # held out: one pet, one greyscale, one scene
DEMO_SETS = {"sr_x2": dict(task="sr", scale=2), "sr_x3": dict(task="sr", scale=3),
             "sr_x4": dict(task="sr", scale=4), "denoise_s25": dict(task="denoise", sigma=25)}
DEGRADATION_SETS = {
    "hr": dict(task="online", split="train"),
    **{f"denoise_s{s}": dict(task="denoise", sigma=s, split="val") for s in (15, 50)},
    **{f"jpeg_q{q}": dict(task="jpeg", quality=q, split="val") for q in (10, 20, 30, 40)},
    **{f"{t}_synth": dict(task=t, split="both") for t in ("derain", "dehaze", "deblur", "lowlight")},
}


def export_photos(folder: Path) -> Path:
    """Write the downscaled demo photos as PNG into `folder` (skipped if already there)."""
    import skimage.data  # scikit-image and its scipy load in seconds: only when photos are missing

    folder.mkdir(parents=True, exist_ok=True)
    for name, loader in DEMO_PHOTOS.items():
        path = folder / f"{name}.png"
        if path.exists():
            continue
        img = getattr(skimage.data, loader)()
        img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)
        factor = DEMO_MAX_SIDE / max(img.shape[:2])
        if factor < 1:
            img = to_uint8(imresize(img, factor))
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(img)).save(tmp, format="PNG")
    return folder


def _subset(photos: Path, folder: Path, names: list[str]) -> Path:
    """A folder with copies of some demo photos (skipped if already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (folder / f"{name}.png").exists():
            with atomic_path(folder / f"{name}.png") as tmp:
                shutil.copyfile(photos / f"{name}.png", tmp)
    return folder


def demo_dirs(root: Path, keys=None) -> dict[str, Path]:
    return {key: Path(root) / f"demo_{key}" for key in (DEMO_SETS if keys is None else keys)}


def build_demo(root: Path, progress: bool = True, keys=None) -> dict[str, Path]:
    """Build the demo datasets under `root` unless they exist; returns {"sr_x2": dir, ...}.
    The check is cheap (manifest present and loadable); a leftover is rebuilt. `keys` picks sets
    from DEMO_SETS and DEGRADATION_SETS (default: DEMO_SETS); unknown keys are a DatasetError."""
    unknown = [k for k in (keys or ()) if k not in DEMO_SETS and k not in DEGRADATION_SETS]
    if unknown:
        raise DatasetError(f"unknown demo dataset {unknown[0]!r}; "
                           f"available: {', '.join([*DEMO_SETS, *DEGRADATION_SETS])}")
    root, dirs = Path(root), demo_dirs(root, keys)
    todo = []
    for key, d in dirs.items():
        try:
            load_manifest(d, verify=False)
        except DatasetError:
            todo.append(key)
    local = [k for k in todo if k in DEGRADATION_SETS]  # tiny: built in this process, no Ray
    if local:
        photos = export_photos(root / "demo_photos")
        for key in local:
            kw = dict(DEGRADATION_SETS[key])
            if kw["split"] != "both":  # train: the non-val photos; val: the three held-out ones
                held_out = kw["split"] == "val"
                src = _subset(photos, root / f"demo_photos_{kw['split']}",
                              [n for n in DEMO_PHOTOS if (n in DEMO_VAL) == held_out])
            else:
                src, kw["val_names"] = photos, DEMO_VAL
            build_dataset(src, dirs[key], sub_size=DEMO_SUB, step=DEMO_STEP,
                          images_per_shard=math.ceil((len(DEMO_PHOTOS) - len(DEMO_VAL)) / 2), overwrite=True,
                          progress=progress, local=True, **kw)
    todo = [k for k in todo if k in DEMO_SETS]
    if not todo:
        return dirs
    with ray_session():  # one Ray for every set, not one per build
        photos = export_photos(root / "demo_photos")
        for key in todo:
            build_dataset(photos, dirs[key], split="both", val_names=DEMO_VAL, sub_size=DEMO_SUB, step=DEMO_STEP,
                          images_per_shard=math.ceil((len(DEMO_PHOTOS) - len(DEMO_VAL)) / 2), overwrite=True,
                          progress=progress, **DEMO_SETS[key])
    return dirs
