"""The resolved train config: pydantic dataclasses, validated once at the edge.

A config comes from YAML (a train file or a study's `base`) plus `--set key=value` overrides.
Values from the command line go through `ast.literal_eval` and must match their field's type;
an unknown key is an error that names the closest valid keys (nanoGPT's configurator, without `exec`).
pydantic checks the shape, types and ranges (`extra="forbid"`, `Literal`s, `Field` constraints);
`validation_error` words its errors as one line. Values set in code (a study's trial values, straight
from Tune) go through `load_config(raw, values={dotted: value})` or `cfg.with_values(...)`, never text.
`train_schema()` is the JSON Schema an editor completes a config with (`hiir schema train`).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import functools
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, StrictBool, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass
from typing_extensions import Required, TypedDict

from hiir.data_prep.online import validate_pipeline
from hiir.models import HiIRConfig
from hiir.platform.errors import ConfigError, did_you_mean, validation_error
from hiir.platform.fields import STRICT, Float, Int, NonEmpty
from hiir.platform.model_section import (
    DEFAULT_MODEL,
    model_keys,
    model_schema,
    resolve_model,
    typed_model,
    with_default,
)


class MixtureEntry(TypedDict, total=False):
    __pydantic_config__ = STRICT
    task: Required[NonEmpty]               # task name (unique, no '/'): its metrics are logged under it
    dataset: Required[NonEmpty]            # its train set (as data.train)
    weight: Annotated[Float, Field(gt=0)]  # its share of each batch, relative to the others (default 1)
    degrade: list[dict[str, Any]]          # its on-the-fly pipeline (as data.degrade)
    val: list[str]                         # its val sets; they join data.val


MIXTURE_KEYS = tuple(MixtureEntry.__annotations__)


@dataclass(config=STRICT)
class DataConfig:
    train: str = "demo:sr_x2"            # dataset dir, s3:// URI, or demo:<name> (built on first use)
    val: list[str] = Field(default_factory=lambda: ["demo:sr_x2"])  # whole-image val sets
    batch_size: Int = Field(8, gt=0)     # per worker
    lq_patch: Int = Field(32, gt=0)      # LQ patch side; GT side is lq_patch * scale
    augment: StrictBool = True           # random flips and rot90
    # On-the-fly degradation of `train`: an ordered pipeline made from the GT patch, e.g.
    # [{kind: noise, sigma: [15, 75]}, {kind: jpeg, quality: [10, 90]}]; kinds bicubic (scale, first),
    # blur (sigma), noise (sigma, 8-bit levels), jpeg (quality). See hiir.data_prep.online.
    degrade: list[dict[str, Any]] = Field(default_factory=list)
    # Task mixture (instead of one `train` set, which is then "mixture"): [{task, dataset, weight,
    # degrade?, val?}]. Each batch mixes tasks by weight; each task's `val` sets join `val`.
    mixture: list[MixtureEntry] = Field(default_factory=list)


@dataclass(config=STRICT)
class OptimConfig:
    lr: Float = Field(2e-4, gt=0)        # peak learning rate
    weight_decay: Float = Field(0.0, ge=0)  # AdamW decoupled weight decay
    betas: tuple[Float, Float] = (0.9, 0.99)  # Adam betas
    warmup_steps: Int = Field(0, ge=0)   # linear warmup; the paper's scaling knob
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"  # decay after warmup
    milestones: tuple[Float, ...] = (0.5, 0.8, 0.9, 0.95)  # multistep, as fractions of max_steps
    gamma: Float = Field(0.5, gt=0)      # multistep decay
    min_lr_ratio: Float = Field(0.01, ge=0)  # cosine floor, as a fraction of lr
    max_steps: Int = Field(200, gt=0)    # optimizer steps of the whole run
    grad_clip: Float = Field(1.0, ge=0)  # max global grad norm; 0 disables
    loss: Literal["l1", "charbonnier"] = "l1"  # pixel loss against GT
    ema_decay: Float = Field(0.999, ge=0, lt=1)  # 0 disables the EMA (validation then uses the raw weights)
    max_bad_steps: Int = Field(5, ge=0)  # consecutive NaN/inf losses tolerated (each skipped) before stopping

    @field_validator("milestones", mode="before")
    @classmethod
    def _one_milestone(cls, value: Any) -> Any:  # `milestones: 0.5` is a list of one
        return (value,) if isinstance(value, (int, float, str)) else value


@dataclass(config=STRICT)
class EngineConfig:
    kind: Literal["deepspeed", "ddp"] = "deepspeed"  # what owns the optimizer step
    zero_stage: Literal[0, 1, 2, 3] = 2  # DeepSpeed ZeRO stage 0..3
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 (autocast, fp32 weights) on GPU, fp32 on CPU
    compile: StrictBool = False          # torch.compile the training forward (minutes of compiling; off on CPU)


@dataclass(config=STRICT)
class ScalingConfig:
    num_workers: Int = Field(2, ge=1)    # Ray Train workers (one per GPU with use_gpu)
    use_gpu: StrictBool = False          # one GPU per worker
    cpus_per_worker: Float = Field(1.0, gt=0)  # also the torch threads of each worker


@dataclass(config=STRICT)
class EvalConfig:
    every: Int = Field(100, gt=0)        # steps between validations (and checkpoints)
    max_images: Int = Field(0, ge=0)     # per val set; 0 = all
    tile: Int = Field(0, ge=0)           # tiled inference above this LQ side; 0 = whole image
    tile_overlap: Int = Field(16, ge=0)  # pixels shared by neighbouring tiles
    self_ensemble: StrictBool = False    # adds the x8 "+" numbers


@dataclass(config=STRICT)
class CheckpointConfig:
    keep: Int = Field(2, ge=1)           # newest checkpoints kept on storage


@dataclass(config=STRICT)
class TrackingConfig:
    experiment: str = "hiir"             # MLflow experiment
    log_every: Int = Field(10, gt=0)     # steps between metric logs
    sample_images: Int = Field(2, ge=0)  # LQ | output | GT strips logged at the end
    system_metrics_s: Float = Field(10.0, ge=0)  # MLflow system-metrics sampling interval; 0 disables


@dataclass(config=STRICT)
class BudgetConfig:
    # Training compute in FLOPs (forward + backward, all workers, as the flop counter measures a step);
    # when given, it sets optim.max_steps = flops / FLOPs per step, so models of every size get the same compute.
    flops: Float | None = Field(None, gt=0)


@dataclass(config=STRICT)
class TrainConfig:
    name: str = "run"                    # run name; a re-run with the same name resumes
    seed: Int = 0                        # model init, data order and augmentation
    # a preset, or family + params; + HiIRConfig overrides
    model: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_MODEL))
    data: DataConfig = Field(default_factory=DataConfig)  # datasets and batches
    optim: OptimConfig = Field(default_factory=OptimConfig)  # optimizer, schedule, loss, EMA
    engine: EngineConfig = Field(default_factory=EngineConfig)  # DeepSpeed or DDP
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)  # Ray Train workers
    eval: EvalConfig = Field(default_factory=EvalConfig)  # validation
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)  # checkpoints kept
    max_failures: Int = Field(2, ge=0)   # worker failures retried from the last checkpoint
    budget: BudgetConfig = Field(default_factory=BudgetConfig)  # a compute budget instead of a step count
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # MLflow

    @field_validator("model", mode="before")
    @classmethod
    def _keep_preset(cls, value: Any) -> Any:  # `model: {attention: cosine}` keeps the default preset
        return with_default(value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @functools.cached_property
    def resolved_model(self) -> HiIRConfig:
        """The HiIRConfig this run trains (the preset with its overrides, or the family solved at model.params),
        resolved once per config. Not a field: the config serialises as its `model` section, and MLflow logs
        this as the `resolved_model.*` params."""
        return resolve_model(self.model)

    def with_values(self, values: dict[str, Any]) -> TrainConfig:
        """A copy with dotted keys set (`{"optim.lr": 1e-3, "data.val": [...]}`), validated again as a whole;
        with no `model.*` key among them it carries the resolved model over instead of solving it again."""
        same_model = not any(k.split(".")[0] == "model" for k in values)
        return load_config(self.to_dict(), values=values, resolved=self.resolved_model if same_model else None)


_ADAPTER = TypeAdapter(TrainConfig)


# ---------------------------------------------------------------- loading


def load_config(raw: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = (),
                values: dict[str, Any] | None = None, *, resolved: HiIRConfig | None = None) -> TrainConfig:
    """Build and validate a TrainConfig from a plain dict, `key=value` overrides (text, as typed on a
    command line) and then `values` (dotted key -> value, applied as they are). The model section is resolved
    here, once (`cfg.resolved_model`); `resolved` is that of a config with the same model section."""
    raw = copy.deepcopy(raw) if raw is not None else {}
    for item in overrides:
        set_key(raw, *parse_override(item))
    for key, value in (values or {}).items():
        set_key(raw, key, value)
    try:
        cfg = _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise validation_error(exc, root=TrainConfig, unknown=_unknown_key) from None
    _check_data(cfg.data, raw.get("data") or {})
    cfg.model = typed_model(cfg.model)  # plain JSON values
    if resolved is not None:
        cfg.__dict__["resolved_model"] = resolved  # functools.cached_property's slot
    cfg.resolved_model  # noqa: B018 (resolves and validates the model section; the network pads any patch)
    return cfg


def load_config_file(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
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
    """`optim.lr=1e-3` -> ("optim.lr", 0.001); `true`/`false` are booleans, as in a config file (and as
    Python's True/False); other bare words stay strings; a list or mapping of bare words is read as YAML
    flow (`data.val=[s3://b/Set5, s3://b/Set14]`), as in a config file."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value")
    key, text = item.split("=", 1)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
        if text.strip() in ("true", "false"):  # YAML's spelling, which the config files use
            value = text.strip() == "true"
        elif text.strip()[:1] in ("[", "{"):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"override {key.strip()}={text!r} is neither a Python literal nor YAML: "
                                  f"{str(exc).splitlines()[0]}") from None
    return key.strip(), value


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """`raw["optim"]["lr"] = value` for `"optim.lr"`, making the sections on the way; the value is
    stored as it is (validation comes when the dict is loaded)."""
    *sections, last = dotted.split(".")
    for part in sections:
        nxt = raw.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        raw = nxt
    raw[last] = value


def _unknown_key(name: str, loc: tuple) -> str:
    if loc[:2] == ("data", "mixture"):
        return f"{name} is not a mixture field ({', '.join(MIXTURE_KEYS)})"
    return f"{name} is not a config field{did_you_mean(name, config_keys(), cutoff=0.5)}"


def _check_data(data: DataConfig, raw_data: dict) -> None:
    """Normalise data.degrade and data.mixture in place (idempotent: a resolved config's to_dict()
    loads back to the same config)."""
    try:
        data.degrade = validate_pipeline(data.degrade, "data.degrade")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not data.mixture:
        return
    if data.degrade:
        raise ConfigError("data.degrade applies to a single data.train set; "
                          "with data.mixture give each entry its degrade")
    if "train" not in raw_data:
        data.train = "mixture"
    elif data.train != "mixture":
        raise ConfigError(f"data.train={data.train!r} conflicts with data.mixture; "
                          "leave data.train out (or set it to mixture)")
    val = list(data.val) if "val" in raw_data else []
    entries, tasks = [], set()
    for i, entry in enumerate(data.mixture):
        at = f"data.mixture[{i}]"
        if "/" in entry["task"] or entry["task"] in tasks:
            raise ConfigError(f"{at}.task={entry['task']!r} must be unique and contain no '/'")
        tasks.add(entry["task"])
        try:
            steps = validate_pipeline(entry.get("degrade") or [], f"{at}.degrade")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        sets = entry.get("val") or []
        val += [v for v in sets if v not in val]
        entries.append({"task": entry["task"], "dataset": entry["dataset"], "weight": entry.get("weight", 1.0),
                        "degrade": steps, "val": sets})
    data.mixture, data.val = entries, val


def val_tasks(data: DataConfig) -> dict[str, str]:
    """val set ref -> task name, for the sets a mixture entry lists (per-task means in evaluation)."""
    return {v: e["task"] for e in data.mixture for v in e.get("val", [])}


# ---------------------------------------------------------------- keys and schema


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
    keys = [k for k in flatten(TrainConfig().to_dict()) if not k.startswith("model.")]
    return keys + model_keys()


def train_schema() -> dict[str, Any]:
    """The JSON Schema of a train config (`hiir schema train`; studies/schema/train.schema.json)."""
    schema = _ADAPTER.json_schema()
    schema["$defs"]["ModelSection"] = model_schema()
    schema["properties"]["model"] = {"$ref": "#/$defs/ModelSection",
                                     "description": schema["properties"]["model"]["description"]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
