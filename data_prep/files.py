"""Files, local or remote: `filesystem(uri)` and atomic writes, the one way hiir writes a file.

Every write goes to a hidden temporary name beside its target and is renamed into place, so a crash
never leaves a half-written file that looks whole: a shard, a manifest, a report, a plot, study.json.
`write_atomic` takes a local path or a URI (s3://, gs://; through `pyarrow.fs`); `atomic_path` hands a
local temporary path to writers that need a file name (PIL, matplotlib, safetensors).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

TMP_PREFIX = ".tmp-"


def filesystem(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a local path or a URI such as s3://bucket/dir (pyarrow.fs)."""
    uri = str(uri)
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def write_atomic(target: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `target` (a path or URI) via a hidden temporary file and a rename; parents are made."""
    fs, path = filesystem(target)
    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}"
    with fs.open_output_stream(tmp) as f:
        f.write(data.encode() if isinstance(data, str) else data)
    fs.move(tmp, path)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside local `target`, for the file or directory the block makes there; moved over
    `target` when the block succeeds (a directory replaces the old one whole), removed when it fails."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{target.name}")
    old = tmp.with_name(tmp.name + ".old")
    try:
        yield tmp
        if tmp.is_dir() and target.is_dir():  # a rename cannot replace a non-empty directory: move it aside first
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, old):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
