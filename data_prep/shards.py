"""Stage 3: rows and Parquet shards, written atomically, read through `pyarrow.fs`.

Format (the contract with the readers). One row is one GT/LQ pair:
  name (string), source (string: the image file name), y, x (int32: top-left of the
  sub-image in the GT image; 0 for whole val images), gt_h, gt_w, lq_h, lq_w, c (int32),
  gt, lq (binary: raw C-order uint8 bytes, HxWxC).
Shards are Parquet with zstd level 1 compression and one row group per source image.

Why raw uint8 + zstd rather than PNG bytes: zstd decodes once when a shard is loaded, after which
every patch is a zero-copy slice, while PNG must be decoded per patch, which would stall training;
zstd also exploits the overlap of DIV2K-style sub-images, which PNG cannot. The sizes and speeds
measured are in bench/RESULTS.md, "data".

Every shard is written atomically (`files.write_atomic`), so an interrupted build never leaves a
shard that looks complete.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hiir.data_prep.errors import DatasetError
from hiir.data_prep.files import filesystem, write_atomic

SCHEMA = pa.schema([
    ("name", pa.string()), ("source", pa.string()), ("y", pa.int32()), ("x", pa.int32()),
    ("gt_h", pa.int32()), ("gt_w", pa.int32()), ("lq_h", pa.int32()), ("lq_w", pa.int32()),
    ("c", pa.int32()), ("gt", pa.binary()), ("lq", pa.binary()),
])
COMPRESSION, COMPRESSION_LEVEL = "zstd", 1


def sub_image_positions(length: int, sub_size: int, step: int) -> list[int]:
    """Top-left offsets along one axis, DIV2K's extract_subimages with thresh_size 0:
    every `step`, plus a last crop flush with the border when the grid misses it."""
    pos = list(range(0, length - sub_size + 1, step))
    if pos and length - (pos[-1] + sub_size) > 0:
        pos.append(length - sub_size)
    return pos


def image_rows(gt: np.ndarray, lq: np.ndarray, *, name: str, source: str, split: str,
               scale: int, sub_size: int | None, step: int | None) -> pa.Table:
    """Rows of one image: for train, sub-images at matching GT/LQ positions; for val, the whole pair."""
    if split == "val" or sub_size is None:
        boxes = [(0, 0, gt.shape[0], gt.shape[1])]
    else:
        boxes = [(y, x, sub_size, sub_size) for y in sub_image_positions(gt.shape[0], sub_size, step)
                 for x in sub_image_positions(gt.shape[1], sub_size, step)]
    cols = {k: [] for k in SCHEMA.names}
    for i, (y, x, h, w) in enumerate(boxes):
        g = gt[y : y + h, x : x + w]
        q = lq[y // scale : (y + h) // scale, x // scale : (x + w) // scale]
        row_name = name if split == "val" else f"{name}_s{i:03d}"
        for k, v in zip(SCHEMA.names, (row_name, source, y, x, h, w, q.shape[0], q.shape[1], g.shape[2],
                                       np.ascontiguousarray(g).tobytes(), np.ascontiguousarray(q).tobytes())):
            cols[k].append(v)
    return pa.table(cols, schema=SCHEMA)


def write_shard(tables: list[pa.Table], out_dir: str, name: str) -> tuple[int, str]:
    """Write `tables` (one row group each) as shard `name` in `out_dir`, atomically.
    Returns (rows, sha256 hex) of the file as written."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, SCHEMA, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL,
                          use_dictionary=False, write_statistics=["name", "source", "y", "x"]) as writer:
        for t in tables:
            writer.write_table(t, row_group_size=max(1, t.num_rows))
    buf = sink.getvalue()
    write_atomic(f"{out_dir}/{name}", buf)
    return sum(t.num_rows for t in tables), hashlib.sha256(memoryview(buf)).hexdigest()


def read_shard_bytes(dataset_dir: str, name: str) -> pa.Buffer:
    """The bytes of one shard: memory-mapped for local files, read through pyarrow.fs otherwise."""
    fs, root = filesystem(dataset_dir)
    path = f"{root}/{name}"
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            with pa.memory_map(path) as f:
                return f.read_buffer()
        with fs.open_input_file(path) as f:
            return f.read_buffer()
    except (FileNotFoundError, OSError) as exc:
        raise DatasetError(f"shard {path} cannot be read: {exc}") from None


def read_shard(buf: pa.Buffer, label: str) -> pa.Table:
    """Parse shard bytes into a Table with SCHEMA; a truncated or foreign file is a DatasetError."""
    try:
        table = pq.read_table(pa.BufferReader(buf))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"shard {label} is not a readable Parquet file (truncated?): {exc}") from None
    if not table.schema.equals(SCHEMA):
        raise DatasetError(f"shard {label} has columns {table.schema.names}, expected {SCHEMA.names}")
    return table


def sha256_of(buf) -> str:
    """Hex sha256 of a buffer (zero-copy over a memory map)."""
    return hashlib.sha256(memoryview(buf)).hexdigest()
