"""A study spec: YAML data (a base train config, a search space, a scheduler) parsed and validated once.

Spec keys (top level) are the fields of `StudySpec`. `search` axes are dotted config keys or the paper's axis
names (`warmup`, `attention`, `conv`, `tree_depth`, `size`, `mixer_l2`, `layout`). A `scale` block
(`scale: {smoke: ...}`) shrinks the study to minutes on a laptop. What every paper study's smoke block shares
(one CPU worker, batch 8, one checkpoint kept, the smoke experiment, frequent logs) is a profile, a scale
block kept once under studies/profiles/ that a block names with `profile: smoke` and extends; the loader
applies nothing a spec does not name. pydantic checks the document's shape; the base config and every
finite point of the space are validated when the spec is loaded, not in a trial hours later.
`study_schema()` is the JSON Schema an editor completes a spec with (`hiir schema study`).
"""
from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

import hiir.studies
from hiir.models import FAMILIES, PRESETS, parse_size
from hiir.platform import tracking
from hiir.platform.config import TrainConfig, config_keys, load_config, parse_override, set_key, train_schema
from hiir.platform.errors import ConfigError, HiirError, did_you_mean, validation_error
from hiir.platform.fields import STRICT
from hiir.platform.study.axes import LR_AXIS, SEED_AXIS, WIDTH_AXES
from hiir.platform.train.checks import check_patch, crosses_patches

log = logging.getLogger("hiir.study")

# The paper's axis names -> config keys.
AXIS_ALIASES = {
    "warmup": "optim.warmup_steps",
    "attention": "model.attention",
    "conv": "model.stage_conv",
    "stage_conv": "model.stage_conv",
    "tree_depth": "model.tree_depth",
    "size": "model.preset",              # presets by name, or {params: [...], family: name}: model.params
    "preset": "model.preset",
    "params": "model.params",
    "budget": "budget.flops",
    "seed": "seed",
    "mixer_l2": "model.mixer_l2",
    "layout": "model.layout",
    "lr": "optim.lr",
}

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
MAX_POINTS = 5000  # finite points of a space validated at load (a product of choices can be huge)
PROFILES = "profiles"  # the directory under studies/ that holds shared scale blocks


class _Block(BaseModel):
    model_config = STRICT

    @model_validator(mode="before")
    @classmethod
    def _drop_empty(cls, raw: Any) -> Any:  # a key left empty in YAML (`search:`) is a key left out
        return {k: v for k, v in raw.items() if v is not None} if isinstance(raw, dict) else raw


class Scheduler(_Block):
    kind: Literal["asha", "none"] = "none"  # asha stops weak trials early; none runs every trial to the end
    time_attr: str = "step"              # what ASHA counts: step, or training_iteration (validation reports)
    grace_period: int = Field(50, ge=1)  # time_attr units every trial runs before ASHA may stop it
    reduction_factor: int = Field(2, ge=2)  # ASHA keeps 1/reduction_factor of the trials at each rung


class Scale(_Block):
    # a shared scale block under studies/profiles/ (`profile: smoke` -> profiles/smoke.yaml) that this one
    # extends: its set, presets and search keys and scheduler fields apply unless this block gives them too
    profile: str | None = None
    set: dict[str, Any] = {}             # base keys (dotted, or axis names) -> value
    presets: dict[str, str] = {}         # preset -> the small one that replaces it, in the base and the size axis
    search: dict[str, Any] = {}          # axes replaced or added
    scheduler: Scheduler = Scheduler()   # scheduler fields changed
    num_samples: int = Field(1, ge=1)    # samples of each grid point
    seeds: int = Field(1, ge=1)          # replicates of every cell
    note: str = ""                       # what this scale can ask of the full question (the report's first lines)


class Claim(_Block):
    """A direction the paper states (`expected.claims`), which the report checks against the study's trials
    (hiir.platform.results.claims).

    `level` and `reference` pick the two sides' trials by config key. A `model.*` key matches the trial's
    resolved model, so `model.tree_depth: 3` holds at every scale, whatever preset a scale swaps in; a list
    is any of its values (`optim.warmup_steps: [10000, 100]`: the full scale's warmup and the smoke scale's);
    a preset also matches the preset a scale's `presets` put in its place. `where` narrows both sides (the
    larger size, say). `paper` names the two `expected.rows` (by their `match`: the level's, then the
    reference's) whose difference is the paper's number. A `trend` claim is about the size axis instead: the
    direction of PSNR with size, judged by the size trend on the size means."""

    says: str                            # the paper's direction in words: "depth 3 beats depth 2"
    level: dict[str, Any] = {}           # config key -> value (or [values]): the compared side
    reference: dict[str, Any] = {}       # the side it is compared with
    where: dict[str, Any] = {}           # only trials with these values, on both sides
    paper: list[dict[str, Any]] = []     # [level row's match, reference row's match] in expected.rows
    trend: Literal["rises", "falls"] | None = None  # a size claim: PSNR rises (or falls) with size

    @model_validator(mode="after")
    def _one_kind(self) -> Claim:
        if self.trend is None and not (self.level and self.reference):
            raise ValueError("a claim needs level and reference (two sides to compare), or trend: rises|falls")
        if self.trend is not None and (self.level or self.reference):
            raise ValueError("a trend claim is about the size axis: give no level or reference")
        if self.trend is None and not self.paper:
            raise ValueError("a level/reference claim needs paper: the two expected rows whose difference is the "
                             "paper's number (its sign is the direction checked)")
        if self.paper and len(self.paper) != 2:
            raise ValueError(f"paper names two expected rows (the level's match, the reference's), got "
                             f"{len(self.paper)}")
        return self


@dataclass
class Axis:
    key: str                 # dotted config key
    kind: str                # one of DISTRIBUTIONS
    values: list[Any]        # grid/choice values, or [low, high]


# One shape for the YAML document and the study that runs: `parse_spec` returns the study at one scale, whose
# `base` holds the datasets, resources, the scale block and the overrides, whose `search`, `scheduler`,
# `num_samples` and `seeds` are the scale's, and whose `axes` and trials follow from them.
class StudySpec(_Block):
    """A study: a base train config, a search space over it, a scheduler, and smaller scales of it."""

    name: str                            # the study's name: its MLflow parent run and results directory
    question: str = ""                   # what the study answers (the report's first line)
    base: dict[str, Any]                 # the train config every trial starts from
    datasets: dict[str, Any] = {}        # merged into base.data
    resources: dict[str, Any] = {}       # merged into base.scaling: what one trial holds
    search: dict[str, Any] = {}          # axis -> [values] (a grid) or {choice|uniform|loguniform|randint: [...]}
    num_samples: int = Field(1, ge=1)    # samples of each grid point (the sampled axes are drawn anew)
    seeds: int = Field(1, ge=1)          # replicates of every cell (seed, seed + 1, ...): what seed noise is
    scheduler: Scheduler = Scheduler()   # trial scheduler
    metric: str = "val_psnr"             # what trials are ranked by
    mode: Literal["max", "min"] = "max"  # whether more of metric is better
    expected: dict[str, Any] | None = None  # the paper's numbers: {table, rows: [{match, values}], baselines}
    scale: dict[str, Scale] = {}         # name -> a smaller version of the study (`--scale smoke`)
    # transfer: a learning-rate sweep crossed with widths of one family (and parametrizations); the report
    # adds the best LR per width and its drift per width doubling (platform/results/transfer.py)
    kind: Literal["sweep", "transfer"] = "sweep"

    @field_validator("scale", mode="before")
    @classmethod
    def _empty_scales(cls, value: Any) -> Any:  # `smoke:` with nothing under it runs the study as it is
        return {k: v if v is not None else {} for k, v in value.items()} if isinstance(value, dict) else value

    @property
    def claims(self) -> list[Claim]:
        """The paper's directions this study checks (`expected.claims`), validated when the spec is parsed."""
        return [Claim.model_validate(c) for c in (self.expected or {}).get("claims") or []]

    @functools.cached_property
    def axes(self) -> list[Axis]:
        """The search as Tune's axes (config keys), and the seed axis when `seeds` > 1."""
        axes = [_parse_axis(k, v) for k, v in self.search.items()]
        if self.seeds > 1:
            first = int(self.base.get("seed", 0))
            axes.append(Axis(SEED_AXIS, "grid", list(range(first, first + self.seeds))))
        return axes

    @property
    def trial_count(self) -> int:
        grid = math.prod(len(a.values) for a in self.axes if a.kind == "grid")
        return grid * self.num_samples

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid combination (sampled axes excluded), in a stable order."""
        grid = [a for a in self.axes if a.kind == "grid"]
        return [dict(zip([a.key for a in grid], combo)) for combo in itertools.product(*(a.values for a in grid))]

    def finite_points(self, limit: int = MAX_POINTS) -> list[dict[str, Any]]:
        """The grid crossed with every value of the choice axes and both ends of the ranges: what a trial
        can be handed, which validation checks one by one (the first `limit` of them, with a warning when there
        are more). The first is a representative trial."""
        ends = {"randint": lambda lo, hi: [lo, hi - 1]}
        values = [a.values if a.kind in ("grid", "choice") else ends.get(a.kind, lambda lo, hi: [lo, hi])(*a.values)
                  for a in self.axes]
        total = math.prod(len(v) for v in values)
        if total > limit:
            log.warning("%s: its space has %d finite points (grid x choices x range ends); only the first %d are "
                        "validated and counted", self.name, total, limit)
        points = itertools.islice(itertools.product(*values), limit)
        return [dict(zip([a.key for a in self.axes], combo)) for combo in points]

    def trial_config(self, params: dict[str, Any]) -> TrainConfig:
        """The validated config of one trial: the base with the trial's values set as they are."""
        return load_config(self.base, values=params)

    @functools.cached_property
    def base_trial(self) -> TrainConfig:
        """The first finite point's config, built once: a representative trial (resources, datasets, seed)."""
        return self.trial_config(self.finite_points()[0])


SPEC_KEYS = tuple(StudySpec.model_fields)
SCALE_KEYS = tuple(Scale.model_fields)


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
    raise HiirError(f"study {ref!r} not found{did_you_mean(ref, names, otherwise='; see `hiir study list`')}")


def find_specs(refs: tuple[str, ...] | list[str]) -> list[Path]:
    """Several studies: each ref a spec (as `find_spec` takes it) or a folder of specs (a path, or a name under
    studies/ such as `paper`), whose *.yaml files run in name order. A ref named twice runs once."""
    paths: list[Path] = []
    for ref in refs:
        folder = spec_folder(ref)
        if folder is not None:
            found = sorted(folder.glob("*.yaml"))
            if not found:
                raise HiirError(f"{ref}: a folder with no study (*.yaml) in it")
            paths += found
        else:
            paths.append(find_spec(ref))
    return list(dict.fromkeys(p.resolve() for p in paths))


def spec_folder(ref: str) -> Path | None:
    """The folder of studies `ref` names (a path, or a name under studies/ such as `paper`), or None."""
    for folder in (Path(ref), studies_root() / str(ref)):
        if folder.is_dir():
            return folder
    return None


def studies_root() -> Path:
    return Path(list(hiir.studies.__path__)[0])


def load_spec(ref: str | Path, *, scale: str = "full", overrides: tuple[str, ...] = ()) -> StudySpec:
    path = find_spec(ref)
    if path.resolve().parent == (studies_root() / PROFILES).resolve():
        raise ConfigError(f"{path.name} is a scale profile, not a study: a study's scale block names it with "
                          f"`profile: {path.stem}`")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    try:
        return parse_spec(raw, scale=scale, overrides=overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None


def parse_spec(raw: dict[str, Any], *, scale: str = "full", overrides: tuple[str, ...] = ()) -> StudySpec:
    """The study at `scale` with `overrides` (`key=value`) set, every finite point of its space validated."""
    if not isinstance(raw, dict):
        raise ConfigError("a study spec must be a mapping")
    try:
        doc = StudySpec.model_validate(with_profiles(raw))
    except ValidationError as exc:
        raise validation_error(exc, root=StudySpec, unknown=_unknown_key) from None
    if scale != "full" and scale not in doc.scale:
        raise ConfigError(f"scale={scale!r} is not defined; this study has: full, {', '.join(doc.scale) or '(none)'}")
    _check_presets(doc.scale)
    base = copy.deepcopy(doc.base)
    for section, values in (("data", doc.datasets), ("scaling", doc.resources)):
        if values:
            base.setdefault(section, {}).update(values)
    search, scheduler, num_samples, seeds = dict(doc.search), doc.scheduler, doc.num_samples, doc.seeds
    if scale != "full":
        block = doc.scale[scale]
        search = _apply_scale(base, search, block)
        scheduler = scheduler.model_copy(update=block.scheduler.model_dump(exclude_unset=True))
        num_samples = block.num_samples if "num_samples" in block.model_fields_set else num_samples
        seeds = block.seeds if "seeds" in block.model_fields_set else seeds
    for item in overrides:
        key, value = parse_override(item)
        set_key(base, _axis_key(key), value)
    search = _size_families(base, search)
    if seeds > 1 and any(_axis_key(name) == SEED_AXIS for name in search):
        raise ConfigError("seeds and a seed axis exclude each other: seeds: K replicates every cell K times")
    spec = doc.model_copy(update={"base": base, "search": search, "scheduler": scheduler,
                                  "num_samples": num_samples, "seeds": seeds})
    if spec.trial_count < 1:
        raise ConfigError("the search space is empty: every grid axis needs at least one value")
    if seeds > 1 and scheduler.kind == "asha":
        raise ConfigError("scheduler.kind=asha with seeds > 1 would stop some replicates of a cell and not others, "
                          "which biases its mean and its seed noise; use scheduler: {kind: none} with seeds")
    if spec.kind == "transfer":
        _check_transfer(spec)
    _check_claims(spec)
    _check_trials(spec)
    return spec


def with_profiles(raw: dict[str, Any]) -> dict[str, Any]:
    """The spec with every `profile:` of its scale blocks written out: the profile's block (a YAML file under
    studies/profiles/) with the study's block over it: `set`, `presets` and `search` key by key, `scheduler`
    field by field, the rest whole. What a study ran with stays in its study.json, whatever the profile says later."""
    scales = raw.get("scale")
    if not isinstance(scales, dict) or not any(isinstance(b, dict) and "profile" in b for b in scales.values()):
        return raw
    out = {**raw, "scale": dict(scales)}
    for scale, block in scales.items():
        if isinstance(block, dict) and "profile" in block:
            block = dict(block)
            profile = load_profile(block.pop("profile"))
            merged = {**profile, **block}
            for key in ("set", "presets", "search", "scheduler"):
                if isinstance(profile.get(key), dict) and isinstance(block.get(key), dict):
                    merged[key] = {**profile[key], **block[key]}
            out["scale"][scale] = merged
    return out


def profile_names() -> list[str]:
    return sorted(p.stem for p in (studies_root() / PROFILES).glob("*.yaml"))


def load_profile(name: Any) -> dict[str, Any]:
    """A shared scale block by name (studies/profiles/<name>.yaml); an unknown name is a one-line error."""
    if not isinstance(name, str) or name not in profile_names():
        raise ConfigError(f"scale profile {name!r} is not one of studies/{PROFILES}/: {', '.join(profile_names())}")
    block = yaml.safe_load((studies_root() / PROFILES / f"{name}.yaml").read_text()) or {}
    where = f"studies/{PROFILES}/{name}.yaml"
    if not isinstance(block, dict) or "profile" in block:
        raise ConfigError(f"{where} must be a scale block ({', '.join(k for k in SCALE_KEYS if k != 'profile')}) "
                          "and name no other profile")
    try:
        Scale.model_validate(block)
    except ValidationError as exc:
        raise ConfigError(f"{where}: " + str(validation_error(exc, root=Scale, unknown=lambda key, loc: (
            f"{key} is not a scale field ({', '.join(SCALE_KEYS)})")))) from None
    return copy.deepcopy(block)


def _check_transfer(spec: StudySpec) -> None:
    """A transfer spec sweeps 3+ learning rates on a grid across 2+ widths, every trial to its end."""
    axes = {a.key: a for a in spec.axes}
    lr = axes.get(LR_AXIS)
    if lr is None or lr.kind != "grid" or len(lr.values) < 3:
        raise ConfigError("kind=transfer needs search.lr (optim.lr) as a list of 3+ learning rates (log-spaced); "
                          f"got {'none' if lr is None else f'{lr.kind} {lr.values}'}")
    width = [axes[k] for k in WIDTH_AXES if k in axes]
    if len(width) != 1 or width[0].kind != "grid" or len(width[0].values) < 2:
        raise ConfigError("kind=transfer needs one width axis with 2+ values: search.size: {params: [...], family: "
                          "F} (a family grows by width) or search.model.dim: [...]")
    if spec.scheduler.kind != "none":
        raise ConfigError(f"kind=transfer needs scheduler.kind=none (got {spec.scheduler.kind}): a trial stopped "
                          "early has no final loss, and the curve of loss against LR would lose its weak side")


def _size_families(base: dict[str, Any], search: dict[str, Any]) -> dict[str, Any]:
    """`size: {params: [30M, 60M] | {loguniform: [lo, hi]}, family: b}` -> an axis over model.params, with the
    base's model section turned into that family (its preset dropped, its other overrides kept)."""
    out = {}
    for name, value in search.items():
        if _axis_key(name) != "model.preset" or not isinstance(value, dict) or not {"family", "params"} & set(value):
            out[name] = value
            continue
        if set(value) != {"family", "params"}:
            raise ConfigError(f"search.{name} by parameter count is {{params: [...], family: NAME}}; "
                              f"got keys {', '.join(map(str, value))}")
        model = {k: v for k, v in base.get("model", {}).items() if k != "preset"}
        base["model"] = {**model, "family": value["family"]}
        params = value["params"]
        if isinstance(params, dict) and set(params) & {"uniform", "loguniform"}:  # Tune samples numbers
            params = {k: [parse_size(v) for v in bounds] for k, bounds in params.items()}
        out["model.params"] = params
    return out


def _check_claims(spec: StudySpec) -> None:
    """Each claim reads (`Claim`), and the expected rows its `paper` names exist: a typo is found now, not
    as a claim with no paper number in a report hours later."""
    raw = (spec.expected or {}).get("claims") or []
    if not isinstance(raw, list):
        raise ConfigError("expected.claims must be a list of claims (says, level, reference, paper | trend)")
    for i, item in enumerate(raw):
        try:
            claim = Claim.model_validate(item)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(map(str, error["loc"]))
            raise ConfigError(f"expected.claims[{i}]{'.' + where if where else ''}: {error['msg']}") from None
        for row in claim.paper:
            if expected_values(spec, row) is None:
                raise ConfigError(f"expected.claims[{i}].paper: no expected row has match {row}")


def expected_values(spec: StudySpec, match: dict[str, Any]) -> dict[str, Any] | None:
    """The values of the `expected.rows` entry whose `match` is `match` (compared as text: YAML may give 0 or
    "0"), or None when no row has it."""
    def text(m: dict[str, Any]) -> dict[str, str]:
        return {str(k): str(v) for k, v in m.items()}
    for row in (spec.expected or {}).get("rows") or []:
        if text(row.get("match") or {}) == text(match):
            return row.get("values") or {}
    return None


def _check_trials(spec: StudySpec) -> None:
    """Every trial the space can produce (the grid crossed with the choices) validates now, not in a
    trial hours later; a cell with no path across patch borders is named once, as a warning."""
    isolated = []
    for i, point in enumerate(spec.finite_points()):
        try:
            cfg = spec.base_trial if i == 0 else spec.trial_config(point)
            check_patch(cfg)
        except ConfigError as exc:
            raise ConfigError(f"trial {point}: {exc}") from None
        if not crosses_patches(cfg):
            isolated.append({k: v for k, v in point.items() if k.startswith("model.")})
    if isolated:
        cells = "; ".join(", ".join(f"{k}={v}" for k, v in p.items()) for p in {str(p): p for p in isolated}.values())
        log.warning("%s: %s: no path for information across P x P patch borders (tree depth 2, linear stage "
                    "ends, L2 bounded by P): each output pixel sees only its own patch; the report marks these "
                    "trials", spec.name, cells)


def _unknown_key(name: str, loc: tuple) -> str:
    if loc[-2:-1] == ("scheduler",) and len(loc) in (2, 4):
        return f"{name} is not a scheduler field ({', '.join(Scheduler.model_fields)})"
    if loc[0] == "scale" and len(loc) == 3:
        return f"{name} is not a scale field ({', '.join(SCALE_KEYS)}){did_you_mean(loc[-1], SCALE_KEYS, n=1)}"
    return f"{name} is not a study field{did_you_mean(name, SPEC_KEYS, n=2)}"


def _check_presets(scales: dict[str, Scale]) -> None:
    for scale, block in scales.items():
        for name in (n for pair in block.presets.items() for n in pair):
            if name not in PRESETS:
                raise ConfigError(f"scale.{scale}.presets: {name!r} is not a known preset; see `hiir models`")


def _apply_scale(base: dict, search: dict, block: Scale) -> dict:
    """Shrink a study: `set` overrides base keys; `presets` swaps big presets for small ones."""
    for key, value in block.set.items():
        set_key(base, _axis_key(key), value)
    if block.presets:
        model = base.setdefault("model", {})
        if model.get("preset") in block.presets:
            model["preset"] = block.presets[model["preset"]]
        for name, axis in search.items():
            if _axis_key(name) == "model.preset":
                kind, values = _axis_kind(name, axis)
                search[name] = {kind: list(dict.fromkeys(block.presets.get(v, v) for v in values))}
    return {**search, **block.search}


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
        raise ConfigError(f"search axis {name!r} is not a config field"
                          + did_you_mean(key, list(AXIS_ALIASES) + config_keys()))
    kind, values = _axis_kind(name, value)
    if not values:
        raise ConfigError(f"search.{name} is empty")
    if kind in ("uniform", "loguniform", "randint") and len(values) != 2:
        raise ConfigError(f"search.{name}.{kind} needs [low, high]")
    return Axis(key, kind, list(values))


def study_schema() -> dict[str, Any]:
    """The JSON Schema of a study spec (`hiir schema study`; studies/schema/study.schema.json): the StudySpec
    document with `base` as a train config, `datasets`/`resources` as its data/scaling sections, and
    search axes and `set` keys completed from the config keys and the paper's axis names."""
    schema, train = StudySpec.model_json_schema(), train_schema()
    defs = {**train.pop("$defs"), **schema.pop("$defs")}
    train.pop("$schema")
    defs["TrainConfig"] = train
    props, scale = schema["properties"], defs["Scale"]["properties"]
    for key, target in (("base", "TrainConfig"), ("datasets", "DataConfig"), ("resources", "ScalingConfig")):
        props[key] = {"$ref": f"#/$defs/{target}", "description": props[key]["description"]}
    keys = {"enum": sorted(AXIS_ALIASES) + config_keys()}
    values = {"type": "array", "minItems": 1}
    sampled = {"type": "object", "minProperties": 1, "maxProperties": 1,
               "propertyNames": {"enum": list(DISTRIBUTIONS)}, "additionalProperties": values}
    by_count = {"type": "object", "required": ["params", "family"], "additionalProperties": False,
                "description": "size by parameter count: {params: [30M, 60M] or {loguniform: [lo, hi]}, family: b}",
                "properties": {"params": {"anyOf": [values, sampled]}, "family": {"enum": list(FAMILIES)}}}
    axis = {"anyOf": [values, sampled, by_count]}
    for search in (props["search"], scale["search"]):
        search.update(propertyNames=keys, additionalProperties=axis)
    scale["set"]["propertyNames"] = keys
    scale["profile"] = {"enum": profile_names(), "description": scale["profile"]["description"]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "$defs": defs}


@dataclass
class Transferred:
    """The best values of a finished small study, to apply to a larger one's base config."""

    source: str                 # the small study's name
    parent_run_id: str          # its MLflow study run
    trial: str                  # the trial the values come from (run name)
    values: dict[str, str]      # config key -> value, as the trial's axis tags hold it
    parametrization: str = "standard"  # the trial's: what its learning rates mean ...
    base_dim: int | None = None        # ... at which width (μP: its mup_base_dim; standard: its own width)
    mup_rules: int | None = None       # μP: the rules' version it trained under (models.mup.MUP_RULES_VERSION)

    def overrides(self) -> tuple[str, ...]:
        return tuple(f"{k}={v}" for k, v in self.values.items())

    def tags(self) -> dict[str, str]:
        source = {tracking.TRANSFER_PARAMETRIZATION_TAG: self.parametrization,
                  **({tracking.TRANSFER_BASE_DIM_TAG: str(self.base_dim)} if self.base_dim else {}),
                  **({tracking.MUP_RULES_TAG: str(self.mup_rules)} if self.mup_rules else {})}
        return {tracking.TRANSFER_FROM_TAG: f"{self.source} (run {self.parent_run_id}, trial {self.trial})",
                **{f"{tracking.TRANSFER_TAG}{k}": v for k, v in self.values.items()}, **source}


def check_transfer(transferred: Transferred, spec: StudySpec) -> None:
    """A transferred key must not be an axis of the new study: the axis would silently replace it."""
    clash = sorted(set(transferred.values) & {a.key for a in spec.axes})
    if clash:
        raise HiirError(f"--transfer-from {transferred.source}: {', '.join(clash)} is a search axis of {spec.name}, "
                        "which would replace the transferred value; drop the axis or the flag")
