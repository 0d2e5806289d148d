"""The train config is typed and validated once; every error names the field."""
from __future__ import annotations

import pytest

from hiir.platform.config import ConfigError, flatten, load_config, parse_override


def test_defaults_validate_and_flatten():
    cfg = load_config({})
    flat = flatten(cfg.to_dict())
    assert flat["optim.warmup_steps"] == 0 and flat["model.preset"] == "tiny_x2"


def test_overrides_are_typed():
    cfg = load_config({}, ["optim.lr=1e-3", "model.attention=cosine", "engine.zero_stage=3", "data.val=['a', 'b']"])
    assert cfg.optim.lr == 1e-3 and cfg.engine.zero_stage == 3 and cfg.data.val == ["a", "b"]
    assert cfg.model_config().attention == "cosine"
    assert parse_override("name=my run") == ("name", "my run")
    # lists of bare words, as in a YAML file (dataset URIs on a cluster)
    cfg = load_config({}, ["data.val=[s3://b/Set5, s3://b/Set14]", "data.train=s3://b/DF2K"])
    assert cfg.data.val == ["s3://b/Set5", "s3://b/Set14"] and cfg.data.train == "s3://b/DF2K"


@pytest.mark.parametrize("raw, overrides, words", [
    ({}, ["optim.warmpu_steps=3"], ["optim.warmpu_steps", "optim.warmup_steps"]),
    ({}, ["optim.lr=fast"], ["optim.lr", "number"]),
    ({}, ["optim.warmup_steps=-5"], ["optim.warmup_steps", ">= 0"]),
    ({}, ["engine.zero_stage=4"], ["engine.zero_stage", "0, 1, 2, 3"]),
    ({}, ["engine.kind=fsdp"], ["engine.kind", "deepspeed, ddp"]),
    ({}, ["model.preset=tiny_x3"], ["model.preset", "tiny_x2"]),
    ({}, ["model.scale=5"], ["scale"]),
    ({}, ["model.patch=10"], ["patch", "multiple"]),
    ({}, ["model.atention=dot"], ["model.atention", "attention"]),
    ({"optim": 3}, [], ["optim", "mapping"]),
    ({}, ["nokey"], ["key=value"]),
    ({}, ["data.val=[a, b"], ["data.val", "YAML"]),
])
def test_bad_values_name_the_field(raw, overrides, words):
    with pytest.raises(ConfigError) as info:
        load_config(raw, overrides)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
