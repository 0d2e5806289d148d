"""Stage 4: `manifest.json`, the record of a dataset and all that training relies on.

The manifest is written last (atomically), so a directory without one is never a dataset.
Loading it checks the schema version, that every shard name is a plain file name inside the
directory (no '..', no absolute path, no symlink leading out), that every shard exists and,
with verify=True, that every shard's sha256 matches.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs

from hiir.data_prep.errors import DatasetError
from hiir.data_prep.files import TMP_PREFIX, filesystem, write_atomic
from hiir.data_prep.shards import read_shard, read_shard_bytes, sha256_of

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"^(train|val)-\d{5}\.parquet$")


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name inside the dataset directory, e.g. train-00000.parquet
    split: str  # train | val
    rows: int
    sha256: str


@dataclass(frozen=True)
class SkippedImage:
    path: str
    reason: str


@dataclass
class Manifest:
    schema_version: int
    task: str  # sr | denoise | jpeg | paired
    scale: int  # 1 for every task but sr (and paired SR)
    degradation: dict  # e.g. {"kind": "bicubic_matlab", "scale": 2} or {"kind": "gaussian", "sigma": 25}
    seed: int
    source: str
    lq_source: str | None = None
    sub_size: int | None = None  # GT sub-image size of the train split
    step: int | None = None
    encoding: str = "raw-uint8+zstd"  # see shards.py
    shards: list[ShardInfo] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)

    def split_shards(self, split: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == split]

    def rows(self, split: str) -> int:
        return sum(s.rows for s in self.split_shards(split))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        d = dict(d)
        d["shards"] = [ShardInfo(**s) for s in d.get("shards", [])]
        d["skipped"] = [SkippedImage(**s) for s in d.get("skipped", [])]
        return cls(**d)


def write_manifest(dataset_dir: str, manifest: Manifest) -> None:
    """Write manifest.json atomically; called after every shard is in place."""
    write_atomic(f"{dataset_dir}/{MANIFEST}", manifest.to_json())


def dataset_state(dataset_dir: str) -> str:
    """'missing', 'empty', 'dataset' (has a manifest) or 'leftover' (our files, no manifest)."""
    fs, root = filesystem(dataset_dir)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return "missing"
    if info.type != pafs.FileType.Directory:
        raise DatasetError(f"dataset path {root} exists and is not a directory")
    names = [os.path.basename(f.path) for f in fs.get_file_info(pafs.FileSelector(root))]
    if MANIFEST in names:
        return "dataset"
    if any(SHARD_NAME.match(n) or n.startswith(TMP_PREFIX) for n in names):
        return "leftover"
    return "empty" if not names else "other"


def _check_shard_name(root: str, fs: pafs.FileSystem, name: str) -> None:
    """A shard name must be a plain `train|val-NNNNN.parquet` file that stays inside the directory."""
    if not SHARD_NAME.match(name):
        raise DatasetError(f"manifest in {root} lists shard {name!r}, "
                           "which is not a plain train-/val-NNNNN.parquet name")
    if isinstance(fs, pafs.LocalFileSystem):
        real, base = os.path.realpath(os.path.join(root, name)), os.path.realpath(root)
        if os.path.commonpath([real, base]) != base:
            raise DatasetError(f"shard {os.path.join(root, name)} is a link leading outside the dataset directory")


def read_verified(dataset_dir: str, shard: ShardInfo) -> pa.Table:
    """Read one shard, check its sha256 against the manifest, and parse it."""
    buf = read_shard_bytes(dataset_dir, shard.name)
    label = f"{filesystem(dataset_dir)[1]}/{shard.name}"
    if sha256_of(buf) != shard.sha256:
        raise DatasetError(f"shard {label} does not match its sha256 in manifest.json (corrupt or modified)")
    table = read_shard(buf, label)
    if table.num_rows != shard.rows:
        raise DatasetError(f"shard {label} has {table.num_rows} rows, manifest.json says {shard.rows}")
    return table


def load_manifest(dataset_dir, verify: bool = True) -> Manifest:
    """Read and check `dataset_dir/manifest.json`; with verify=True also every shard's sha256.

    Raises DatasetError naming the directory, shard or field at fault."""
    dataset_dir = str(dataset_dir)
    fs, root = filesystem(dataset_dir)
    state = dataset_state(dataset_dir)
    if state == "leftover":
        raise DatasetError(f"{root} holds shards but no manifest.json: the leftover of an interrupted build; "
                           "rebuild it with overwrite")
    if state != "dataset":
        raise DatasetError(f"{root} is not a dataset: it has no manifest.json (build one with `hiir data build`)")
    try:
        with fs.open_input_stream(f"{root}/{MANIFEST}") as f:
            raw = json.loads(f.read().decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{root}/{MANIFEST} is not valid JSON: {exc}") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{root}/{MANIFEST} has schema_version {version!r}; "
                           f"this hiir reads version {SCHEMA_VERSION}: rebuild the dataset")
    try:
        manifest = Manifest.from_dict(raw)
    except TypeError as exc:
        raise DatasetError(f"{root}/{MANIFEST} has unexpected or missing fields: {exc}") from None
    for shard in manifest.shards:
        _check_shard_name(root, fs, shard.name)
        if fs.get_file_info(f"{root}/{shard.name}").type != pafs.FileType.File:
            raise DatasetError(f"shard {root}/{shard.name} listed in manifest.json is missing")
    if verify:
        for shard in manifest.shards:
            buf = read_shard_bytes(dataset_dir, shard.name)
            if sha256_of(buf) != shard.sha256:
                raise DatasetError(f"shard {root}/{shard.name} does not match its sha256 in manifest.json "
                                   "(corrupt or modified)")
    return manifest
