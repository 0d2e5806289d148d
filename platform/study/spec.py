"""A study spec: YAML data (a base train config, a search space, a scheduler) parsed and validated once.

Spec keys (top level): name, question, base, datasets, resources, search, num_samples, scheduler,
metric, mode, expected, scale. `search` axes are dotted config keys or the paper's axis names
(`warmup`, `attention`, `conv`, `tree_depth`, `size`, `mixer_l2`, `layout`). A `scale` block
(`scale: {smoke: ...}`) shrinks the study to minutes on a laptop. The base config and every grid point
are validated when the spec is loaded, not in a trial hours later.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hiir.platform.config import TrainConfig, config_keys, load_config
from hiir.platform.errors import ConfigError, HiirError

# The paper's axis names -> config keys.
AXIS_ALIASES = {
    "warmup": "optim.warmup_steps",
    "attention": "model.attention",
    "conv": "model.stage_conv",
    "stage_conv": "model.stage_conv",
    "tree_depth": "model.tree_depth",
    "size": "model.preset",
    "preset": "model.preset",
    "mixer_l2": "model.mixer_l2",
    "layout": "model.layout",
    "lr": "optim.lr",
}

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")

SCALE_KEYS = ("set", "presets", "search", "scheduler", "num_samples")

SPEC_KEYS = ("name", "question", "base", "datasets", "resources", "search", "num_samples", "scheduler",
             "metric", "mode", "expected", "scale")

@dataclass
class Axis:
    key: str                 # dotted config key
    kind: str                # one of DISTRIBUTIONS
    values: list[Any]        # grid/choice values, or [low, high]

@dataclass
class Scheduler:
    kind: Literal["asha", "none"] = "none"
    time_attr: str = "step"
    grace_period: int = 50
    reduction_factor: int = 2

@dataclass
class StudySpec:
    name: str
    question: str
    base: dict[str, Any]
    axes: list[Axis]
    num_samples: int = 1
    scheduler: Scheduler = field(default_factory=Scheduler)
    metric: str = "val_psnr"
    mode: Literal["max", "min"] = "max"
    expected: dict[str, Any] | None = None
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    @property
    def trial_count(self) -> int:
        grid = math.prod(len(a.values) for a in self.axes if a.kind == "grid")
        return grid * self.num_samples

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid combination (sampled axes excluded), in a stable order."""
        grid = [a for a in self.axes if a.kind == "grid"]
        return [dict(zip([a.key for a in grid], combo)) for combo in itertools.product(*(a.values for a in grid))]

    def trial_config(self, params: dict[str, Any]) -> TrainConfig:
        """The validated config of one trial."""
        return load_config(self.base, [f"{k}={v!r}" for k, v in params.items()])

def find_spec(ref: str | Path) -> Path:
    """A path, or a name under studies/ (`smoke`, `paper/table3_scaling`)."""
    path = Path(ref)
    if path.is_file():
        return path
    root = studies_root()
    for candidate in (root / f"{ref}.yaml", root / str(ref)):
        if candidate.is_file():
            return candidate
    names = [str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")]
    close = difflib.get_close_matches(str(ref), names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `hiir study list`"
    raise HiirError(f"study {ref!r} not found{hint}")

def studies_root() -> Path:
    import hiir.studies

    return Path(list(hiir.studies.__path__)[0])

def load_spec(ref: str | Path, *, scale: str = "full", overrides: tuple[str, ...] = ()) -> StudySpec:
    import yaml

    path = find_spec(ref)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    try:
        return parse_spec(raw, scale=scale, overrides=overrides, path=path)
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None

def parse_spec(raw: dict[str, Any], *, scale: str = "full", overrides: tuple[str, ...] = (),
               path: Path | None = None) -> StudySpec:
    if not isinstance(raw, dict):
        raise ConfigError("a study spec must be a mapping")
    for key in raw:
        if key not in SPEC_KEYS:
            close = difflib.get_close_matches(key, SPEC_KEYS, n=2)
            raise ConfigError(f"{key} is not a study field" + (f"; did you mean {', '.join(close)}?" if close else ""))
    for key in ("name", "base"):
        if key not in raw:
            raise ConfigError(f"{key} is missing")
    scales = raw.get("scale") or {}
    if scale != "full" and scale not in scales:
        raise ConfigError(f"scale={scale!r} is not defined; this study has: full, {', '.join(scales) or '(none)'}")
    base = copy.deepcopy(raw["base"])
    _merge_section(base, "data", raw.get("datasets"))
    _merge_section(base, "scaling", raw.get("resources"))
    search = copy.deepcopy(raw.get("search") or {})
    sched = dict(raw.get("scheduler") or {}) if isinstance(raw.get("scheduler") or {}, dict) else raw["scheduler"]
    num_samples = raw.get("num_samples", 1)
    if scale != "full":
        scale_cfg = scales[scale] or {}
        _check_scale(scale, scale_cfg)
        search = _apply_scale(base, search, scale_cfg, scale)
        if isinstance(sched, dict):
            sched.update(scale_cfg.get("scheduler") or {})
        num_samples = scale_cfg.get("num_samples", num_samples)
    for item in overrides:
        from hiir.platform.config import _set_path, parse_override

        key, value = parse_override(item)
        _set_path(base, _axis_key(key).split("."), value)
    axes = [_parse_axis(name, value) for name, value in search.items()]
    if not isinstance(sched, dict):
        raise ConfigError("scheduler must be a mapping like {kind: asha, grace_period: 50}")
    unknown = set(sched) - {f.name for f in dataclasses.fields(Scheduler)}
    if unknown:
        raise ConfigError(f"scheduler.{sorted(unknown)[0]} is not a scheduler field (kind, time_attr, "
                          "grace_period, reduction_factor)")
    if sched.get("kind", "none") not in ("asha", "none"):
        raise ConfigError(f"scheduler.kind={sched['kind']!r} is not one of asha, none")
    spec = StudySpec(
        name=str(raw["name"]), question=str(raw.get("question", "")), base=base, axes=axes,
        num_samples=int(num_samples), scheduler=Scheduler(**sched),
        metric=str(raw.get("metric", "val_psnr")), mode=raw.get("mode", "max"),
        expected=raw.get("expected"), scales=scales, path=path)
    if spec.mode not in ("max", "min"):
        raise ConfigError(f"mode={spec.mode!r} is not one of max, min")
    if spec.num_samples < 1:
        raise ConfigError("num_samples must be >= 1")
    if spec.trial_count < 1:
        raise ConfigError("the search space is empty: every grid axis needs at least one value")
    # Validate the base and every grid point now, not in a trial hours later.
    spec.trial_config({})
    for point in spec.grid_points():
        try:
            spec.trial_config(point)
        except ConfigError as exc:
            raise ConfigError(f"trial {point}: {exc}") from None
    return spec

def _merge_section(base: dict, section: str, values: dict | None) -> None:
    if values:
        if not isinstance(values, dict):
            raise ConfigError(f"{'datasets' if section == 'data' else 'resources'} must be a mapping")
        base.setdefault(section, {}).update(values)

def _check_scale(scale: str, scale_cfg: Any) -> None:
    from hiir.models import PRESETS

    if not isinstance(scale_cfg, dict):
        raise ConfigError(f"scale.{scale} must be a mapping with any of {', '.join(SCALE_KEYS)}")
    for key in scale_cfg:
        if key not in SCALE_KEYS:
            close = difflib.get_close_matches(key, SCALE_KEYS, n=1)
            raise ConfigError(f"scale.{scale}.{key} is not a scale field ({', '.join(SCALE_KEYS)})"
                              + (f"; did you mean {close[0]}?" if close else ""))
    for source, target in (scale_cfg.get("presets") or {}).items():
        for name in (source, target):
            if name not in PRESETS:
                raise ConfigError(f"scale.{scale}.presets: {name!r} is not a known preset; see `hiir models`")

def _apply_scale(base: dict, search: dict, scale_cfg: dict, scale: str) -> dict:
    """Shrink a study: `set` overrides base keys; `presets` swaps big presets for small ones."""
    from hiir.platform.config import _set_path

    for key, value in (scale_cfg.get("set") or {}).items():
        _set_path(base, _axis_key(key).split("."), value)
    swap = scale_cfg.get("presets") or {}
    if swap:
        model = base.setdefault("model", {})
        if model.get("preset") in swap:
            model["preset"] = swap[model["preset"]]
        for name, axis in search.items():
            if _axis_key(name) == "model.preset":
                kind, values = _axis_kind(name, axis)
                search[name] = {kind: list(dict.fromkeys(swap.get(v, v) for v in values))}
    for name, axis in (scale_cfg.get("search") or {}).items():
        search[name] = axis
    return search

def _axis_key(name: str) -> str:
    return AXIS_ALIASES.get(name, name)

def _axis_kind(name: str, value: Any) -> tuple[str, list]:
    if isinstance(value, list):
        return "grid", value
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError(f"search.{name} must be a list or one of {{{', '.join(DISTRIBUTIONS)}: ...}}")
    (kind, values), = value.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"search.{name}: {kind!r} is not one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, list):
        raise ConfigError(f"search.{name}.{kind} must be a list")
    return kind, values

def _parse_axis(name: str, value: Any) -> Axis:
    key = _axis_key(name)
    if key not in config_keys():
        close = difflib.get_close_matches(key, list(AXIS_ALIASES) + config_keys(), n=3)
        raise ConfigError(f"search axis {name!r} is not a config field" + (f"; did you mean {', '.join(close)}?" if close else ""))
    kind, values = _axis_kind(name, value)
    if not values:
        raise ConfigError(f"search.{name} is empty")
    if kind in ("uniform", "loguniform", "randint") and len(values) != 2:
        raise ConfigError(f"search.{name}.{kind} needs [low, high]")
    return Axis(key, kind, list(values))
