"""Checkpoint integrity: a checkpoint is used only if every rank's files are there, whole.

Every rank that writes checkpoint files also writes `integrity/rank<r>.json`: the size and sha256 of
each of its files and how many ranks write. Ray merges the ranks' folders into one checkpoint. A
worker killed while saving, a truncated upload or a flipped byte then shows as a missing record or a
mismatch, and resume falls back to the previous checkpoint (Ray keeps `checkpoint.keep` of them).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
from ray.train import Checkpoint

from hiir.data_prep.files import write_atomic
from hiir.platform.errors import HiirError

log = logging.getLogger("hiir.checkpoint")

INTEGRITY_DIR = "integrity"


def write_integrity(directory: Path, rank: int, writers: int) -> None:
    """Record this rank's files (call after the rank has written them, before reporting)."""
    files = {str(p.relative_to(directory)): [p.stat().st_size, _sha256(p)]
             for p in sorted(directory.rglob("*")) if p.is_file() and INTEGRITY_DIR not in p.parts}
    write_atomic(directory / INTEGRITY_DIR / f"rank{rank}.json",
                 json.dumps({"rank": rank, "writers": writers, "files": files}))


def verify(directory: Path) -> None:
    """Raise HiirError naming what is missing or damaged; return quietly if the checkpoint is whole."""
    directory = Path(directory)
    records = sorted((directory / INTEGRITY_DIR).glob("rank*.json"))
    if not records:
        raise HiirError(f"checkpoint {directory.name} has no integrity record "
                        "(written by an older or interrupted save)")
    loaded = [json.loads(r.read_text()) for r in records]
    writers = loaded[0]["writers"]
    if len(loaded) != writers:
        raise HiirError(f"checkpoint {directory.name} is incomplete: {len(loaded)} of {writers} ranks saved")
    for record in loaded:
        for name, (size, digest) in record["files"].items():
            path = directory / name
            if not path.is_file():
                raise HiirError(f"checkpoint {directory.name}: {name} is missing")
            if path.stat().st_size != size or _sha256(path) != digest:
                raise HiirError(f"checkpoint {directory.name}: {name} is truncated or corrupt")


def candidates(checkpoint) -> Iterator:
    """The checkpoint Ray offers, then the older ones of the same run, newest first."""
    yield checkpoint
    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent = path.rsplit("/", 1)[0]
    try:
        infos = fs.get_file_info(pafs.FileSelector(parent))
    except OSError as exc:
        log.warning("cannot list older checkpoints in %s: %s", parent, exc)
        return
    older = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.path.rstrip("/") < path), reverse=True)
    for other in older:
        yield Checkpoint(other, filesystem=fs)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
