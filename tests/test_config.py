"""The train config is typed and validated once; every error names the field."""
from __future__ import annotations

import pytest

from hiir.platform.config import ConfigError, flatten, load_config, parse_override, set_key
from hiir.platform.errors import did_you_mean


def test_defaults_validate_and_flatten():
    cfg = load_config({})
    flat = flatten(cfg.to_dict())
    assert flat["optim.warmup_steps"] == 0 and flat["model.preset"] == "tiny_x2"


def test_overrides_are_typed():
    cfg = load_config({}, ["optim.lr=1e-3", "model.attention=cosine", "engine.zero_stage=3", "data.val=['a', 'b']"])
    assert cfg.optim.lr == 1e-3 and cfg.engine.zero_stage == 3 and cfg.data.val == ["a", "b"]
    assert cfg.resolved_model.attention == "cosine"
    assert parse_override("name=my run") == ("name", "my run")
    # YAML's booleans, as a config file spells them (they were strings, refused as "must be true or false")
    assert parse_override("model.mean_shift=true") == ("model.mean_shift", True)
    assert parse_override("eval.self_ensemble=false") == ("eval.self_ensemble", False)
    assert load_config({}, ["model.mean_shift=false"]).resolved_model.mean_shift is False  # tiny_x2 shifts
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
    ({}, ["optim.ema_decay=1.0"], ["optim.ema_decay=1.0", "in [0, 1)"]),
    ({}, ["optim.max_steps=2.5"], ["optim.max_steps", "integer"]),
    ({}, ["optim.max_steps=True"], ["optim.max_steps", "integer"]),
    ({}, ["data.augment=1"], ["data.augment", "true or false"]),
    ({}, ["model.qkv_bias=1"], ["model.qkv_bias", "true or false"]),
    ({}, ["optim.betas=[0.9, 0.99, 0.999]"], ["optim.betas", "2 items"]),
    ({}, ["data.val=Set5"], ["data.val", "list"]),
    ({}, ["model.heads=x"], ["model.heads", "wrong type"]),
    ({}, ["model.preset=tiny_unet", "model.mean_shift=true"], ["mean_shift", "arch='unet'", "global residual"]),
    ({"data": {"mixture": [{"task": "a", "dataset": "x", "wieght": 1}]}}, [],
     ["data.mixture[0].wieght", "weight, degrade"]),
    ([], [], ["config", "mapping"]),
])
def test_bad_values_name_the_field(raw, overrides, words):
    with pytest.raises(ConfigError) as info:
        load_config(raw, overrides)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_yaml_quirks_are_read_as_before():
    """YAML 1.1 reads 2e-4 as a string; an int field takes 3.0; one milestone needs no list;
    `model: {...}` without a preset keeps the default one."""
    cfg = load_config({"optim": {"lr": "2e-4", "max_steps": 300.0, "milestones": 0.5},
                       "model": {"attention": "cosine"}})
    assert cfg.optim.lr == 2e-4 and cfg.optim.max_steps == 300 and isinstance(cfg.optim.max_steps, int)
    assert cfg.optim.milestones == (0.5,) and cfg.model == {"preset": "tiny_x2", "attention": "cosine"}


def test_values_are_set_as_they_are_and_round_trip():
    import json

    cfg = load_config({}, values={"optim.lr": 1e-3, "data.val": ["a", "b"], "model.heads": (2, 4)})
    assert cfg.optim.lr == 1e-3 and cfg.data.val == ["a", "b"] and cfg.resolved_model.heads == (2, 4)
    assert load_config(json.loads(json.dumps(cfg.to_dict()))) == cfg  # what a worker loads back
    other = cfg.with_values({"name": "other", "tracking.experiment": "e"})
    assert (other.name, other.tracking.experiment, other.optim.lr) == ("other", "e", 1e-3) and cfg.name == "run"
    raw = {"optim": {"lr": 1.0}}
    set_key(raw, "optim.warmup_steps", 5)
    set_key(raw, "eval.every", 7)
    assert raw == {"optim": {"lr": 1.0, "warmup_steps": 5}, "eval": {"every": 7}}
    with pytest.raises(ConfigError, match="optim.lr.x: lr is not a section"):
        set_key(raw, "optim.lr.x", 1)


def test_the_model_section_is_resolved_once_and_is_not_a_field(monkeypatch):
    """The HiIRConfig is resolved when the config is loaded, and carried over by `with_values` unless a model key
    changes; the config still serialises (and logs, and checkpoints) as its `model` section alone."""
    import dataclasses

    import hiir.platform.config as config

    cfg = load_config({"model": {"family": "tiny", "params": "0.1M", "attention": "cosine"}})
    model = cfg.resolved_model
    assert model.attention == "cosine" and cfg.resolved_model is model
    assert cfg.to_dict()["model"] == {"family": "tiny", "params": "0.1M", "attention": "cosine"}
    assert "resolved_model" not in cfg.to_dict() and "resolved_model" not in {f.name for f in dataclasses.fields(cfg)}
    calls = []
    monkeypatch.setattr(config, "resolve_model", lambda section: calls.append(section) or model)
    assert cfg.with_values({"optim.lr": 1e-3}).resolved_model is model and not calls
    cfg.with_values({"model.attention": "dot"})
    assert len(calls) == 1


def test_did_you_mean():
    assert did_you_mean("atention", ["attention", "layout"]) == "; did you mean attention?"
    assert did_you_mean("zzz", ["attention"], otherwise="; see `hiir models`") == "; see `hiir models`"
    assert did_you_mean("zzz", ["attention"]) == ""
