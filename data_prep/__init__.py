"""hiir.data_prep: image folders to Parquet shards with a manifest, and numpy readers.

Stages are plain functions, one module each: scan (find, pair, split, load) -> degrade
(MATLAB bicubic, noise, JPEG, blur) -> shards (rows, atomic Parquet writes) -> manifest
(checksums, schema version); build drives them on Ray Data; reader serves training and
validation. No torch here: the manifest and the shard format are the contract.
"""
from hiir.data_prep.build import build_dataset
from hiir.data_prep.degrade import (
                                    add_gaussian_noise,
                                    degrade_image,
                                    gaussian_blur,
                                    jpeg,
                                    mod_crop,
                                    motion_blur,
                                    to_uint8,
)
from hiir.data_prep.demo import build_demo
from hiir.data_prep.errors import DatasetError
from hiir.data_prep.imresize import imresize
from hiir.data_prep.manifest import SCHEMA_VERSION, Manifest, ShardInfo, SkippedImage, load_manifest
from hiir.data_prep.reader import TrainReader, iter_val
from hiir.data_prep.scan import load_image

__all__ = [
    "DatasetError", "Manifest", "SCHEMA_VERSION", "ShardInfo", "SkippedImage", "TrainReader", "add_gaussian_noise",
    "build_dataset", "build_demo", "degrade_image", "gaussian_blur", "imresize", "iter_val", "jpeg", "load_image",
    "load_manifest", "mod_crop", "motion_blur", "to_uint8",
]
