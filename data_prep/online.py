"""On-the-fly degradation and task mixtures: one HR dataset, many degradations.

A *pipeline* is an ordered list of steps, each `{kind: ..., <param>: value | [low, high]}`:

    bicubic  scale: 2 | 3 | 4      MATLAB bicubic downscaling (hiir.data_prep.imresize); first, if present
    blur     sigma: [0.5, 2.0]     isotropic Gaussian blur
    noise    sigma: [15, 75]       Gaussian noise in 8-bit levels (uniform draw per image)
    jpeg     quality: [10, 90]     Pillow JPEG at an integer quality (uniform draw per image, inclusive)

`OnlineDegrade(pipeline)` is TrainReader's `degrade` hook in "from GT" mode: the reader crops GT
patches of lq_patch * scale px (after flips/rot90) and the pipeline computes the LQ side, with the
batch's generator, which is derived from (seed, rank, step) only: a resumed run sees the same stream
and ranks differ. Parameters are drawn per image, so a batch spans the range.

`MixtureReader` interleaves several readers (tasks) per batch: the task of each of the B samples is
drawn by weight from a generator of (seed, rank, step), so the batch at a step is still a pure
function of the step. `counts(step)` gives its composition (logged as `batch_frac/<task>`).
"""
from __future__ import annotations

import numbers
import zlib
from typing import Any

import numpy as np

from hiir.data_prep.degrade import add_gaussian_noise, gaussian_blur, jpeg, to_uint8
from hiir.data_prep.errors import DatasetError
from hiir.data_prep.imresize import imresize
from hiir.data_prep.manifest import load_manifest
from hiir.data_prep.reader import TrainReader

# kind -> (parameter, (allowed low, allowed high), integer?)
STEPS = {"bicubic": ("scale", (2, 4), True), "blur": ("sigma", (0.1, 10.0), False),
         "noise": ("sigma", (0.0, 255.0), False), "jpeg": ("quality", (1, 100), True)}


def validate_pipeline(steps: Any, where: str = "data.degrade") -> list[dict]:
    """Check a pipeline and return it normalised: every parameter a [low, high] list.
    Errors are DatasetErrors that name the field, e.g. `data.degrade[1].quality`."""
    if steps is None:
        return []
    if not isinstance(steps, (list, tuple)):
        raise DatasetError(f"{where} must be a list of steps like [{{kind: noise, sigma: [15, 75]}}]")
    out = []
    for i, step in enumerate(steps):
        at = f"{where}[{i}]"
        if not isinstance(step, dict) or "kind" not in step:
            raise DatasetError(f"{at} must be a mapping with a kind (one of {', '.join(STEPS)})")
        kind = step["kind"]
        if kind not in STEPS:
            raise DatasetError(f"{at}.kind={kind!r} is not one of {', '.join(STEPS)}")
        param, (lo_ok, hi_ok), integer = STEPS[kind]
        extra = set(step) - {"kind", param}
        if extra:
            raise DatasetError(f"{at}.{sorted(extra)[0]} is not a parameter of {kind} (it takes {param})")
        if param not in step:
            raise DatasetError(f"{at}.{param} is missing")
        value = step[param]
        rng = list(value) if isinstance(value, (list, tuple)) else [value, value]
        if len(rng) != 2 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in rng):
            raise DatasetError(f"{at}.{param}={value!r} must be a number or [low, high]")
        if integer and not all(float(v).is_integer() for v in rng):
            raise DatasetError(f"{at}.{param}={value!r} must be integers")
        lo, hi = (int(v) for v in rng) if integer else (float(v) for v in rng)
        if not lo_ok <= lo <= hi <= hi_ok:
            raise DatasetError(f"{at}.{param}={value!r} must satisfy {lo_ok} <= low <= high <= {hi_ok}")
        if kind == "bicubic":
            if lo != hi:
                raise DatasetError(f"{at}.scale must be one factor, not a range")
            if i != 0:
                raise DatasetError(f"{at}: bicubic must be the first step (it makes the LQ size)")
        out.append({"kind": kind, param: [lo, hi]})
    return out


def pipeline_scale(steps: list[dict]) -> int:
    return steps[0]["scale"][0] if steps and steps[0]["kind"] == "bicubic" else 1


def train_pipeline(dataset: str, steps, where: str) -> tuple[list[dict] | None, str]:
    """(steps, label) of the degradation a train set is made with: the config's `steps` (label `where`),
    else the pipeline in the manifest of an HR-only (online) set, else (None, where) for a paired set.
    An online set with neither fails, naming `where`."""
    if steps:
        return list(steps), where
    deg = load_manifest(dataset, verify=False).degradation
    if not deg.get("online"):
        return None, where
    if not deg.get("pipeline"):
        raise DatasetError(f"dataset {dataset} is HR-only (online) and its manifest has no pipeline; "
                           f"give {where} (e.g. [{{kind: noise, sigma: [15, 75]}}])")
    return deg["pipeline"], f"{dataset} manifest.json degradation.pipeline"


def _draw(rng: np.random.Generator, lo, hi, integer: bool):
    if lo == hi:
        return lo
    return int(rng.integers(lo, hi + 1)) if integer else float(rng.uniform(lo, hi))


class OnlineDegrade:
    """TrainReader hook: LQ batch from a GT batch by a declared pipeline. `from_gt` tells the reader
    to crop GT patches of lq_patch * `scale` and ignore any stored LQ. `last_params` keeps the values
    drawn for the latest batch (one dict per image), for tests and debugging."""

    from_gt = True

    def __init__(self, steps: list[dict], where: str = "data.degrade"):
        self.steps = validate_pipeline(steps, where)
        if not self.steps:
            raise DatasetError(f"{where} is empty: an online dataset needs at least one degradation step")
        self.scale = pipeline_scale(self.steps)
        self.last_params: list[dict] = []

    def __call__(self, lq, gt: np.ndarray, rng: np.random.Generator):
        out, params = [], []
        for img in gt:
            drawn, x = {}, img
            for step in self.steps:
                kind = step["kind"]
                name, _, integer = STEPS[kind]
                value = _draw(rng, *step[name], integer)
                drawn[f"{kind}.{name}"] = value
                if kind == "bicubic":
                    x = imresize(x, 1.0 / value)
                elif kind == "blur":
                    x = gaussian_blur(x, value)
                elif kind == "noise":
                    x = add_gaussian_noise(np.asarray(x, np.float64) / 255.0, value, rng) * 255.0
                else:  # jpeg works on uint8
                    x = jpeg(x if x.dtype == np.uint8 else to_uint8(x), value)
            out.append(x if x.dtype == np.uint8 else to_uint8(x))
            params.append(drawn)
        self.last_params = params
        return np.stack(out), gt


def stream_seed(seed: int, label: str) -> int:
    """A reader seed of its own for each task of a mixture (so tasks do not share crops)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(label.encode())]).generate_state(1)[0])


class MixtureReader:
    """Batches mixed from several readers by weight; a pure function of (seed, rank, step)."""

    def __init__(self, readers: dict[str, Any], weights: dict[str, float], *, rank: int, batch_size: int, seed: int):
        if set(readers) != set(weights) or not readers:
            raise DatasetError("a mixture needs one weight per task")
        self.tasks = list(readers)
        self.readers = readers
        w = np.array([float(weights[t]) for t in self.tasks])
        if (w <= 0).any():
            raise DatasetError(f"mixture weights must be > 0, got {dict(weights)}")
        self.probs = w / w.sum()
        scales = {t: r.scale for t, r in readers.items()}
        if len(set(scales.values())) != 1:
            raise DatasetError(f"the tasks of a mixture must share one scale (one model), got {scales}")
        self.scale = next(iter(scales.values()))
        self.rank, self.batch_size, self.seed = rank, batch_size, seed

    def __len__(self) -> int:
        return sum(len(r) for r in self.readers.values())

    def counts(self, step: int) -> dict[str, int]:
        """Samples per task in the batch of `step`."""
        rng = np.random.default_rng([self.seed, self.rank, step, 0x6D6978])  # "mix"
        return dict(zip(self.tasks, (int(c) for c in rng.multinomial(self.batch_size, self.probs))))

    def get_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        lqs, gts = [], []
        for task, n in self.counts(step).items():
            if n:
                lq, gt = self.readers[task].get_batch(step, n=n)
                lqs.append(lq)
                gts.append(gt)
        return np.concatenate(lqs), np.concatenate(gts)


def make_train_reader(train: str, *, degrade=(), mixture=(), rank: int, world_size: int, batch_size: int,
                      lq_patch: int, seed: int, augment: bool = True):
    """The reader of a train config: one dataset (paired, or online when `degrade` is given or the
    manifest is an online dataset with a pipeline) or a mixture of such entries
    (`{task, dataset, weight, degrade?}`; see hiir.platform.config.DataConfig)."""
    def one(dataset: str, steps, seed_: int, where: str):
        pipeline, label = train_pipeline(dataset, steps, where)
        hook = OnlineDegrade(pipeline, label) if pipeline else None
        return TrainReader(dataset, rank=rank, world_size=world_size, batch_size=batch_size, lq_patch=lq_patch,
                           seed=seed_, augment=augment, degrade=hook)

    if not mixture:
        return one(train, degrade, seed, "data.degrade")
    readers = {e["task"]: one(e["dataset"], e.get("degrade") or (), stream_seed(seed, e["task"]),
                              f"data.mixture[{i}].degrade") for i, e in enumerate(mixture)}
    return MixtureReader(readers, {e["task"]: e["weight"] for e in mixture}, rank=rank, batch_size=batch_size,
                         seed=seed)
