"""The `model` section of a train config: what network a run trains.

Either a preset, or a size family and a target parameter count (`hiir.models.families`), plus any
`HiIRConfig` field as an override:

    model: {preset: b_x2_conv3, attention: cosine}
    model: {family: b, params: 30M, scale: 4}     # the family's shape rule solves width and depth

`resolve_model` turns the section into the `HiIRConfig`; errors name `model.<field>` in one line.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal

from pydantic import ConfigDict, StrictBool, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from hiir.models import FAMILIES, PRESETS, HiIRConfig, solve
from hiir.platform.errors import ConfigError, did_you_mean, validation_error
from hiir.platform.fields import Float, Int, field_comments

DEFAULT_MODEL = {"preset": "tiny_x2"}
CHOICE_KEYS = ("preset", "family", "params")  # keys of the section that are not HiIRConfig fields


def with_default(section: Any) -> Any:
    """`model: {attention: cosine}` keeps the default preset; a section naming a family has none."""
    if isinstance(section, dict) and "family" not in section:
        return {**DEFAULT_MODEL, **section}
    return section


@functools.cache
def _adapter() -> tuple[TypeAdapter, dict[str, Any]]:
    """A TypedDict of preset | family + params, and HiIRConfig's fields (bools strict, numbers never bools)."""

    hints = typing.get_type_hints(HiIRConfig)
    strict = {bool: StrictBool, int: Int, float: Float}
    fields = {"preset": Literal[tuple(PRESETS)], "family": Literal[tuple(FAMILIES)], "params": str | Int | Float,
              **{f.name: strict.get(hints[f.name], hints[f.name]) for f in dataclasses.fields(HiIRConfig)}}
    section = TypedDict("ModelSection", fields, total=False)
    section.__pydantic_config__ = ConfigDict(extra="forbid")
    return TypeAdapter(section), hints


def typed_model(section: dict[str, Any]) -> dict[str, Any]:
    """The section validated, as plain JSON values (what a config stores, logs and checkpoints)."""
    return _adapter()[0].dump_python(_validated(section), mode="json")


def _validated(section: dict[str, Any]) -> dict[str, Any]:
    adapter, hints = _adapter()
    if "family" in section:
        if "preset" in section:
            raise ConfigError("model.preset and model.family exclude each other: a preset, or a family and "
                              "model.params")
        if section["family"] not in FAMILIES:
            raise ConfigError(f"model.family={section['family']!r} is not a size family; families: "
                              + ", ".join(FAMILIES))
        if "params" not in section:
            raise ConfigError(f"model.family={section['family']} needs model.params, the target parameter count "
                              "(e.g. 30M)")
    else:
        preset = section.get("preset")
        if preset is None:
            raise ConfigError("model.preset is missing; pick one of `hiir models`")
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigError(f"model.preset={preset!r} is not a known preset"
                              + did_you_mean(preset, PRESETS, otherwise="; see `hiir models`"))
        if "params" in section:
            raise ConfigError("model.params is a size family's target; with model.preset leave it out "
                              "(or give model.family instead of the preset)")
    try:
        return adapter.validate_python(section)
    except ValidationError as exc:
        key = exc.errors()[0]["loc"][0]
        if sum(e["loc"][:1] == (key,) for e in exc.errors()) > 1:  # every type of a union failed
            raise ConfigError(f"model.{key}={section[key]!r} has the wrong type ({hints.get(key, 'a size')})") from None
        raise validation_error(exc, prefix="model", unknown=lambda name, loc: (
            f"{name} is not a model field{did_you_mean(loc[0], [*hints, *CHOICE_KEYS], cutoff=0.5)}")) from None


def resolve_model(section: dict[str, Any]):
    """The section -> HiIRConfig: the preset with its overrides, or the family solved at model.params."""
    overrides = dict(_validated(section))
    try:
        if "family" in overrides:
            family, params = overrides.pop("family"), overrides.pop("params")
            return solve(family, params, **overrides).config
        return dataclasses.replace(PRESETS[overrides.pop("preset")], **overrides)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model: {exc}") from None


def model_keys() -> list[str]:
    """The settable keys of the section, dotted (`model.preset`, `model.params`, `model.attention`, ...)."""
    return [f"model.{k}" for k in CHOICE_KEYS] + [f"model.{f.name}" for f in dataclasses.fields(HiIRConfig)]


def model_schema() -> dict[str, Any]:
    """The section's JSON Schema, each field described by its comment in `HiIRConfig`."""
    schema = _adapter()[0].json_schema()
    for name, text in field_comments(HiIRConfig).items():
        schema["properties"].get(name, {}).setdefault("description", text)
    schema["properties"]["preset"]["description"] = "a name from `hiir models`; the other keys override its fields"
    schema["properties"]["family"]["description"] = ("a size family (hiir.models.families): with model.params, "
                                                     "instead of a preset")
    schema["properties"]["params"]["description"] = "the family's target parameter count: 30M, 0.05M, 500k, 2e6"
    return {**schema, "title": "ModelSection"}
