"""The resolved train config: typed dataclasses, validated once at the edge.

A config comes from YAML (a train file or a study's `base`) plus `--set key=value` overrides.
Values from the command line go through `ast.literal_eval` and must match their field's type;
an unknown key is an error that names the closest valid keys (nanoGPT's configurator, without `exec`).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hiir.platform.errors import ConfigError


@dataclass
class DataConfig:
    train: str = "demo:sr_x2"            # dataset dir, s3:// URI, or demo:<name> (built on first use)
    val: list[str] = field(default_factory=lambda: ["demo:sr_x2"])  # whole-image val sets
    batch_size: int = 8                  # per worker
    lq_patch: int = 32                   # LQ patch side; GT side is lq_patch * scale
    augment: bool = True                 # random flips and rot90
    # On-the-fly degradation of `train` (issue 8): an ordered pipeline made from the GT patch, e.g.
    # [{kind: noise, sigma: [15, 75]}, {kind: jpeg, quality: [10, 90]}]; kinds bicubic (scale, first),
    # blur (sigma), noise (sigma, 8-bit levels), jpeg (quality). See hiir.data_prep.online.
    degrade: list[dict[str, Any]] = field(default_factory=list)
    # Task mixture (instead of one `train` set, which is then "mixture"): [{task, dataset, weight,
    # degrade?, val?}]. Each batch mixes tasks by weight; each task's `val` sets join `val`.
    mixture: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0                # linear warmup; the paper's scaling knob
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)  # multistep, as fractions of max_steps
    gamma: float = 0.5                   # multistep decay
    min_lr_ratio: float = 0.01           # cosine floor, as a fraction of lr
    max_steps: int = 200
    grad_clip: float = 1.0               # max global grad norm; 0 disables
    loss: Literal["l1", "charbonnier"] = "l1"
    ema_decay: float = 0.999             # 0 disables the EMA (validation then uses the raw weights)
    max_bad_steps: int = 5               # consecutive NaN/inf losses tolerated (each skipped) before stopping


@dataclass
class EngineConfig:
    kind: Literal["deepspeed", "ddp"] = "deepspeed"
    zero_stage: int = 2                  # DeepSpeed ZeRO stage 0..3
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 (autocast, fp32 weights) on GPU, fp32 on CPU


@dataclass
class ScalingConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0


@dataclass
class EvalConfig:
    every: int = 100                     # steps between validations (and checkpoints)
    max_images: int = 0                  # per val set; 0 = all
    tile: int = 0                        # tiled inference above this LQ side; 0 = whole image
    tile_overlap: int = 16
    self_ensemble: bool = False          # adds the x8 "+" numbers


@dataclass
class CheckpointConfig:
    keep: int = 2                        # newest checkpoints kept on storage


@dataclass
class TrackingConfig:
    experiment: str = "hiir"
    log_every: int = 10                  # steps between metric logs
    sample_images: int = 2               # LQ | output | GT strips logged at the end
    system_metrics_s: float = 10.0       # MLflow system-metrics sampling interval; 0 disables


@dataclass
class TrainConfig:
    name: str = "run"                    # run name; a re-run with the same name resumes
    seed: int = 0
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny_x2"})  # preset + HiIRConfig overrides
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    max_failures: int = 2                # worker failures retried from the last checkpoint
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self):
        """The HiIRConfig this run trains (preset plus overrides)."""
        return resolve_model(self.model)


# ---------------------------------------------------------------- validation


def resolve_model(section: dict[str, Any]):
    """`{"preset": name, **overrides}` -> HiIRConfig, with errors naming `model.<field>`."""
    from hiir.models import PRESETS, HiIRConfig

    section = dict(section)
    preset = section.pop("preset", None)
    if preset is None:
        raise ConfigError("model.preset is missing; pick one of `hiir models`")
    if preset not in PRESETS:
        close = difflib.get_close_matches(str(preset), PRESETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `hiir models`"
        raise ConfigError(f"model.preset={preset!r} is not a known preset{hint}")
    hints = typing.get_type_hints(HiIRConfig)
    for key, value in section.items():
        if key not in hints:
            raise ConfigError(f"model.{key} is not a model field{_suggest(key, hints)}")
        section[key] = _coerce(value, hints[key], f"model.{key}")
    try:
        return dataclasses.replace(PRESETS[preset], **section)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model: {exc}") from None


def _check_ranges(cfg: TrainConfig) -> None:
    checks = [
        ("optim.lr", cfg.optim.lr > 0, "must be > 0"),
        ("optim.warmup_steps", cfg.optim.warmup_steps >= 0, "must be >= 0"),
        ("optim.max_steps", cfg.optim.max_steps > 0, "must be > 0"),
        ("optim.ema_decay", 0 <= cfg.optim.ema_decay < 1, "must be in [0, 1)"),
        ("optim.grad_clip", cfg.optim.grad_clip >= 0, "must be >= 0"),
        ("engine.zero_stage", cfg.engine.zero_stage in (0, 1, 2, 3), "must be one of 0, 1, 2, 3"),
        ("data.batch_size", cfg.data.batch_size > 0, "must be > 0"),
        ("data.lq_patch", cfg.data.lq_patch > 0, "must be > 0"),
        ("scaling.num_workers", cfg.scaling.num_workers >= 1, "must be >= 1"),
        ("eval.every", cfg.eval.every > 0, "must be > 0"),
        ("checkpoint.keep", cfg.checkpoint.keep >= 1, "must be >= 1"),
        ("max_failures", cfg.max_failures >= 0, "must be >= 0"),
    ]
    for name, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{name}={_get(cfg, name)!r} {rule}")


MIXTURE_KEYS = ("task", "dataset", "weight", "degrade", "val")


def _check_data(data: DataConfig, raw_data: dict) -> None:
    """Validate and normalise data.degrade and data.mixture in place (idempotent: a resolved
    config's to_dict() loads back to the same config)."""
    from hiir.data_prep.online import validate_pipeline

    try:
        data.degrade = validate_pipeline(data.degrade, "data.degrade")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not data.mixture:
        return
    if data.degrade:
        raise ConfigError("data.degrade applies to a single data.train set; with data.mixture give each entry its degrade")
    if "train" not in raw_data:
        data.train = "mixture"
    elif data.train != "mixture":
        raise ConfigError(f"data.train={data.train!r} conflicts with data.mixture; leave data.train out (or set it to mixture)")
    val = list(data.val) if "val" in raw_data else []
    entries, tasks = [], set()
    for i, entry in enumerate(data.mixture):
        at = f"data.mixture[{i}]"
        unknown = set(entry) - set(MIXTURE_KEYS)
        if unknown:
            raise ConfigError(f"{at}.{sorted(unknown)[0]} is not a mixture field ({', '.join(MIXTURE_KEYS)})")
        for key in ("task", "dataset"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ConfigError(f"{at}.{key} is missing (a non-empty string)")
        if "/" in entry["task"] or entry["task"] in tasks:
            raise ConfigError(f"{at}.task={entry['task']!r} must be unique and contain no '/'")
        tasks.add(entry["task"])
        weight = _coerce(entry.get("weight", 1.0), float, f"{at}.weight")
        if not weight > 0:
            raise ConfigError(f"{at}.weight={weight!r} must be > 0")
        try:
            steps = validate_pipeline(entry.get("degrade") or [], f"{at}.degrade")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        sets = _coerce(entry.get("val") or [], list[str], f"{at}.val")
        val += [v for v in sets if v not in val]
        entries.append({"task": entry["task"], "dataset": entry["dataset"], "weight": weight, "degrade": steps, "val": sets})
    data.mixture, data.val = entries, val


def val_tasks(data: DataConfig) -> dict[str, str]:
    """val set ref -> task name, for the sets a mixture entry lists (per-task means in evaluation)."""
    return {v: e["task"] for e in data.mixture for v in e.get("val", [])}


def load_config(raw: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Build and validate a TrainConfig from a plain dict plus `key=value` overrides."""
    raw = _deep_copy(raw or {})
    for item in overrides:
        key, value = parse_override(item)
        _set_path(raw, key.split("."), value)
    cfg = _build(TrainConfig, raw, "")
    _check_ranges(cfg)
    _check_data(cfg.data, raw.get("data") or {})
    cfg.model_config()  # validates the model section; the network pads any patch size itself
    return cfg


def load_config_file(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    return load_config(raw, overrides)


def parse_override(item: str) -> tuple[str, Any]:
    """`optim.lr=1e-3` -> ("optim.lr", 0.001); bare words stay strings; a list or mapping of bare words
    is read as YAML flow (`data.val=[s3://b/Set5, s3://b/Set14]`), as in a config file."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value")
    key, text = item.split("=", 1)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
        if text.strip()[:1] in ("[", "{"):
            import yaml

            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"override {key.strip()}={text!r} is neither a Python literal nor YAML: "
                                  f"{str(exc).splitlines()[0]}") from None
    return key.strip(), value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys (MLflow params, study axes)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_keys() -> list[str]:
    """Every settable dotted key, for suggestions and study-axis validation."""
    from hiir.models import HiIRConfig

    keys = [k for k in flatten(TrainConfig().to_dict()) if not k.startswith("model.")]
    return keys + ["model.preset"] + [f"model.{f.name}" for f in dataclasses.fields(HiIRConfig)]


# ---------------------------------------------------------------- helpers


def _build(cls: type, raw: Any, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in hints:
            raise ConfigError(f"{prefix}{key} is not a config field{_suggest(prefix + str(key), None)}")
    kwargs = {}
    for name, tp in hints.items():
        if name not in raw:
            continue
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], f"{prefix}{name}.")
        elif typing.get_origin(tp) is dict and isinstance(raw[name], dict):
            default = {f.name: f for f in dataclasses.fields(cls)}[name].default_factory()
            kwargs[name] = {**default, **_coerce(raw[name], tp, prefix + name)}  # `model.x=...` keeps the preset
        else:
            kwargs[name] = _coerce(raw[name], tp, prefix + name)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}={value!r} has the wrong type ({tp})")
    if origin in (list, tuple):
        if isinstance(value, (int, float, str)) and origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} must be a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name}={value!r} must have {len(args)} items")
            return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            value = _number(value, name, float)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            value = _number(value, name, int)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string")
        return value
    return value


def _number(value: Any, name: str, kind: type) -> Any:
    try:  # YAML reads 2e-4 as a string; accept numeric strings once, here.
        number = kind(value) if isinstance(value, str) else None
    except ValueError:
        number = None
    if number is None:
        raise ConfigError(f"{name}={value!r} must be {'an integer' if kind is int else 'a number'}")
    return number


def _suggest(key: str, candidates) -> str:
    pool = list(candidates) if candidates is not None else config_keys()
    close = difflib.get_close_matches(key, pool, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _set_path(raw: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        nxt = raw.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(parts)}: {part} is not a section")
        raw = nxt
    raw[parts[-1]] = value


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _deep_copy(d: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}
