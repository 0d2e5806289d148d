"""Stage 5: reading for training and validation, numpy only.

TrainReader is a per-rank, in-memory Arrow reader (the benchmark chose it over Ray Data, see
bench/RESULTS.md "## data"): each rank reads only its part of the train split once, through
pyarrow.fs (memory-mapped for local files, so s3:// and NFS paths work too), checks each
shard's sha256 against the manifest, and keeps the decompressed Arrow buffers. A batch is then
B zero-copy row slices, a random crop, flips and rot90, all on the worker.

Sampling is nanoGPT-style: the batch at `step` is a pure function of (seed, rank, step)
(rows drawn with replacement from the rank's part), so resuming needs only the step counter.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from hiir.data_prep.errors import DatasetError
from hiir.data_prep.manifest import Manifest, load_manifest, read_verified

# The online-degradation hook: degrade(lq, gt, rng) -> (lq, gt), applied per batch after cropping and augmentation.
# A hook with `from_gt = True` and a `scale` (hiir.data_prep.online.OnlineDegrade) makes the LQ side
# itself: the reader then crops only GT patches of lq_patch * hook.scale and passes lq=None.
BatchHook = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class _Rows:
    """Zero-copy access to the gt/lq pixels of the rows of several Arrow tables."""

    def __init__(self, tables: list[pa.Table], keep: Callable[[int], np.ndarray] | None = None):
        self.parts, index, names, start = [], [], [], 0
        for table in tables:
            for batch in table.to_batches():
                cols = {k: batch.column(k) for k in ("gt", "lq")}
                dims = {k: batch.column(k).to_numpy() for k in ("gt_h", "gt_w", "lq_h", "lq_w", "c")}
                bufs = {k: (np.frombuffer(a.buffers()[2], np.uint8) if a.buffers()[2] is not None
                            else np.zeros(0, np.uint8),
                            np.frombuffer(a.buffers()[1], np.int32)[a.offset : a.offset + len(a) + 1])
                        for k, a in cols.items()}
                self.parts.append((bufs, dims))
                rows = np.arange(start, start + batch.num_rows)
                kept = rows if keep is None else rows[keep(rows)]
                index.extend((len(self.parts) - 1, r - start) for r in kept)
                batch_names = batch.column("name").to_pylist()
                names.extend(batch_names[r - start] for r in kept)
                start += batch.num_rows
        self.index, self.names = index, names

    def __len__(self) -> int:
        return len(self.index)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(lq, gt) uint8 HxWxC views of row i."""
        part, r = self.index[i]
        bufs, dims = self.parts[part]
        c = int(dims["c"][r])
        out = []
        for k, (h, w) in (("lq", (dims["lq_h"][r], dims["lq_w"][r])), ("gt", (dims["gt_h"][r], dims["gt_w"][r]))):
            data, offsets = bufs[k]
            out.append(data[offsets[r] : offsets[r + 1]].reshape(int(h), int(w), c))
        return out[0], out[1]

    def min_lq_size(self) -> int:
        return min(int(min(self.parts[p][1]["lq_h"][r], self.parts[p][1]["lq_w"][r])) for p, r in self.index)

    def min_gt_size(self) -> int:
        return min(int(min(self.parts[p][1]["gt_h"][r], self.parts[p][1]["gt_w"][r])) for p, r in self.index)


def augment(lq: np.ndarray, gt: np.ndarray, hflip: bool, vflip: bool, rot90: bool):
    """BasicSR's augment: the same horizontal flip, vertical flip and transpose on both images."""
    if hflip:
        lq, gt = lq[:, ::-1], gt[:, ::-1]
    if vflip:
        lq, gt = lq[::-1], gt[::-1]
    if rot90:
        lq, gt = lq.transpose(1, 0, 2), gt.transpose(1, 0, 2)
    return lq, gt


class TrainReader:
    """Random LQ/GT patch batches from this rank's disjoint part of the train split.

    Shards are dealt round-robin to ranks (shards[rank::world_size]); with fewer shards than
    ranks every rank reads all shards and keeps rows[rank::world_size]. get_batch(step)
    returns (lq, gt) uint8 arrays (B, p, p, C) and (B, p*s, p*s, C).
    """

    def __init__(self, dataset_dir, *, rank: int, world_size: int, batch_size: int, lq_patch: int,
                 seed: int, augment: bool = True, degrade: BatchHook | None = None):
        if not 0 <= rank < world_size:
            raise DatasetError(f"rank {rank} is outside world_size {world_size}")
        self.manifest: Manifest = load_manifest(dataset_dir, verify=False)  # names, existence, schema version
        shards = self.manifest.split_shards("train")
        if not shards:
            raise DatasetError(f"dataset {dataset_dir} has no train split")
        if len(shards) >= world_size:
            mine, keep = shards[rank::world_size], None
        else:
            mine, keep = shards, (lambda rows: rows % world_size == rank)
        self.shards = [s.name for s in mine]
        self.rows = _Rows([read_verified(str(dataset_dir), s) for s in mine], keep)  # sha256 checked here
        if len(self.rows) == 0:
            raise DatasetError(f"dataset {dataset_dir} has too few train rows for rank {rank} of {world_size}")
        self.from_gt = bool(getattr(degrade, "from_gt", False))  # online: LQ made by the hook from GT
        if self.from_gt:
            need = lq_patch * degrade.scale
            if self.rows.min_gt_size() < need:
                raise DatasetError(f"lq_patch {lq_patch} x scale {degrade.scale} = {need} px is larger than the "
                                   f"smallest GT sub-image ({self.rows.min_gt_size()} px) of {dataset_dir}")
        elif self.rows.min_lq_size() < lq_patch:
            raise DatasetError(f"lq_patch {lq_patch} is larger than the smallest LQ sub-image "
                               f"({self.rows.min_lq_size()} px) of {dataset_dir}")
        self.scale = degrade.scale if self.from_gt else self.manifest.scale
        self.rank, self.batch_size, self.lq_patch = rank, batch_size, lq_patch
        self.seed, self.augment, self.degrade = seed, augment, degrade

    def __len__(self) -> int:
        """Train rows (sub-images) of this rank."""
        return len(self.rows)

    @property
    def row_names(self) -> list[str]:
        """Names of this rank's rows (`<image>_sNNN`), e.g. to check that ranks are disjoint."""
        return list(self.rows.names)

    def get_batch(self, step: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(lq, gt) of `step`: a pure function of (seed, rank, step); `n` images (default batch_size)."""
        rng = np.random.default_rng([self.seed, self.rank, step])
        n = self.batch_size if n is None else n
        if self.from_gt:
            return self._gt_batch(rng, n)
        p, s = self.lq_patch, self.scale
        picks = rng.integers(0, len(self.rows), n)
        flips = rng.random((n, 3)) < 0.5 if self.augment else np.zeros((n, 3), bool)
        lqs, gts = [], []
        for i, f in zip(picks, flips):
            lq, gt = self.rows.get(int(i))
            y, x = int(rng.integers(0, lq.shape[0] - p + 1)), int(rng.integers(0, lq.shape[1] - p + 1))
            lq, gt = augment(lq[y : y + p, x : x + p], gt[y * s : (y + p) * s, x * s : (x + p) * s], *f)
            lqs.append(lq)
            gts.append(gt)
        lq, gt = np.stack(lqs), np.stack(gts)  # (B, p, p, C), (B, p*s, p*s, C)
        return self.degrade(lq, gt, rng) if self.degrade else (lq, gt)

    def _gt_batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Online: GT patches of lq_patch * scale (crop, flips, rot90), then the hook makes the LQ."""
        g = self.lq_patch * self.scale
        picks = rng.integers(0, len(self.rows), n)
        flips = rng.random((n, 3)) < 0.5 if self.augment else np.zeros((n, 3), bool)
        gts = []
        for i, f in zip(picks, flips):
            _, gt = self.rows.get(int(i))
            y, x = int(rng.integers(0, gt.shape[0] - g + 1)), int(rng.integers(0, gt.shape[1] - g + 1))
            gts.append(augment(gt[y : y + g, x : x + g], gt[y : y + g, x : x + g], *f)[1])
        return self.degrade(None, np.stack(gts), rng)


def iter_val(dataset_dir, split: str = "val") -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, lq, gt) of every whole, mod-cropped validation image, uint8 HxWxC, in manifest order.
    Each shard's sha256 is checked before its images are yielded."""
    manifest = load_manifest(dataset_dir, verify=False)
    shards = manifest.split_shards(split)
    if not shards:
        raise DatasetError(f"dataset {dataset_dir} has no {split} split")
    for shard in shards:
        table = read_verified(str(dataset_dir), shard)
        rows = _Rows([table])
        for i in range(len(rows)):
            lq, gt = rows.get(i)
            yield rows.names[i], lq.copy(), gt.copy()
