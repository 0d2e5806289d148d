"""Every study spec under studies/ validates, expands to its trial count and carries the paper's
numbers where it reproduces a table; bad specs fail with one clear line. No Ray, no training."""
from __future__ import annotations

import copy
import functools
import itertools
from pathlib import Path

import pytest
import torch

from hiir.models import build, count_params
from hiir.models.summary import model_flops
from hiir.platform.config import flatten, load_config, load_config_file
from hiir.platform.errors import ConfigError, HiirError
from hiir.platform.study.spec import load_spec, parse_spec
from hiir.platform.train.checks import apply_budget, model_stats

STUDIES = Path(__file__).resolve().parents[1] / "studies"

# name -> (trials at full scale, trials at smoke scale); None: the spec has no smoke scale
# (smoke.yaml is itself the demo-scale study).
TRIAL_COUNTS = {
    "smoke": (10, 10),
    "transfer_smoke": (40, 40),              # 4 widths x 5 LRs x standard/mup (kind: transfer)
    "transfer_seeded": (90, None),           # 3 widths x 5 LRs x standard/mup x 3 seeds (kind: transfer)
    "paper/table3_scaling": (12, 8),         # x3: B/L x warmup no/yes x conv1/linear/conv3; smoke: L x 2 x 2 x 2 seeds
    "paper/table3_scaling_x4": (12, 8),
    "paper/table5_attention": (4, 4),        # x3: B/L x dot/cosine; smoke: L x dot/cosine x 2 seeds
    "paper/table5_attention_x4": (4, 4),
    "paper/tree_depth": (3, 6),              # x2: depth 2/3/4 (x 2 seeds at smoke scale, as every paper study)
    "paper/tree_depth_x4": (3, 6),
    "paper/layouts": (6, 6),                 # x4: v1/v2/v3 x with/without L3; smoke: depth 3 only
    "paper/permutation": (5, 10),            # x2: permute/none/shift/grid/random
    "paper/scale_110m": (2, 4),              # x2: B vs XL
    "paper/size_sweep_x2": (12, 8),          # x2: the B family at 6 sizes, 4M..110M, x 2 seeds; smoke: 4 sizes
    "search/warmup_attention_conv_depth": (24, 8),  # ASHA: 6 grid cells x 4 samples; smoke: 2 x 2 x 2 seeds
    "paper/generalization": (1, 2),          # one model, noise + JPEG levels (online degradation)
    "paper/all_in_one": (1, 2),              # one model, five tasks (a mixture); smoke: three
}
MIXTURE = ("paper/generalization", "paper/all_in_one")  # task mixtures on the U-shaped network
PAPER = sorted(n for n in TRIAL_COUNTS if n.startswith("paper/") and n not in MIXTURE)  # the SR tables
ALL_IN_ONE_SETS = ("SOTS", "Rain100L", "BSD68_s25", "GoPro", "LOL")
TEST_SETS = ("Set5", "Set14", "BSD100", "Urban100", "Manga109")
SMOKE_MAX_TRIALS = 10
# mini studies sized for 2 cores (bench/RESULTS.md): their own trial counts
DEMOS = {"smoke": 10, "transfer_smoke": 40, "transfer_seeded": 90}


def spec_names() -> list[str]:
    return sorted(str(p.relative_to(STUDIES).with_suffix("")) for p in STUDIES.rglob("*.yaml")
                  if p.relative_to(STUDIES).parts[0] not in ("train", "profiles"))


@functools.cache
def spec(name: str, scale: str):
    return load_spec(STUDIES / f"{name}.yaml", scale=scale)


def all_points(s) -> list[dict]:
    """Grid points crossed with every value of the finite sampled axes (choice) and the ends of
    the ranges: what a trial can be handed, beyond the grid points that parse_spec checks."""
    axes = []
    for a in s.axes:
        if a.kind in ("grid", "choice"):
            axes.append([(a.key, v) for v in a.values])
        elif a.kind == "randint":
            axes.append([(a.key, a.values[0]), (a.key, a.values[1] - 1)])
        else:
            axes.append([(a.key, v) for v in a.values])
    return [dict(combo) for combo in itertools.product(*axes)]


# ---------------------------------------------------------------- every spec


def test_every_spec_has_its_trial_count_here():
    assert spec_names() == sorted(TRIAL_COUNTS), "add new specs to TRIAL_COUNTS (and drop removed ones)"


@pytest.mark.parametrize("name", sorted(TRIAL_COUNTS))
def test_spec_validates_and_expands(name):
    full, smoke = TRIAL_COUNTS[name]
    s = spec(name, "full")
    assert s.trial_count == full
    for point in all_points(s):
        s.trial_config(point)
    if smoke is None:
        assert "smoke" not in s.scale
        return
    small = spec(name, "smoke")
    assert small.trial_count == smoke <= DEMOS.get(name, SMOKE_MAX_TRIALS)
    for point in all_points(small):
        small.trial_config(point)


@pytest.mark.parametrize("name", sorted(TRIAL_COUNTS))
def test_smoke_scale_fits_two_cpu_cores(name):
    s = spec(name, "full" if TRIAL_COUNTS[name][1] is None else "smoke")
    assert s.trial_count <= DEMOS.get(name, SMOKE_MAX_TRIALS)
    for point in all_points(s):
        cfg = s.trial_config(point)
        train = [e["dataset"] for e in cfg.data.mixture] or [cfg.data.train]
        assert all(t.startswith("demo:") for t in train) and all(v.startswith("demo:") for v in cfg.data.val)
        assert not cfg.scaling.use_gpu
        assert cfg.scaling.num_workers * cfg.scaling.cpus_per_worker <= 2
        # smoke scales are small experiments, each measured on 2 cores (bench/RESULTS.md, "the demo's sizes" and
        # "the paper at laptop scale"); the tests run a pipeline check of a few steps, not these. The U-shaped
        # restoration nets step about 2.5x faster than the columnar ones (6,500 steps of generalization in 10m21s)
        step_cap = 6500 if cfg.data.mixture else 2500
        assert cfg.optim.max_steps <= step_cap and cfg.optim.max_steps % cfg.eval.every == 0
        assert 1 <= cfg.eval.max_images <= 3 and cfg.data.lq_patch <= 32
        # demo widths reach C 128 (the coordinate check's 16 to 128; tiny's 0.4M is C 72); full sizes start at 180
        assert cfg.resolved_model.dim <= 128, f"{point}: a full-size preset survived the smoke scale"
        if cfg.data.mixture:  # restoration tasks: x1 data, x1 model
            assert cfg.resolved_model.scale == 1 and not any("sr_x" in t for t in train + cfg.data.val)
            continue
        data_scale = int(cfg.data.train.rsplit("x", 1)[1])
        assert data_scale == cfg.resolved_model.scale, f"{point}: x{data_scale} data for a different model scale"


@pytest.mark.parametrize("name", PAPER + list(MIXTURE) + ["search/warmup_attention_conv_depth"])
def test_paper_smoke_scales_are_small_experiments_with_seeds_and_say_what_they_ask(name):
    """Every paper study's smoke scale trains with the demo's recipe (the smoke profile) and 2+ seeds, so that
    its answer can be told from seed noise, and its note opens the report. The search's smoke scale is a 2 x 2
    with seeds and no early stopping: ASHA refuses seeds, and one seed tells nothing from seed noise."""
    s = spec(name, "smoke")
    assert len(s.scale["smoke"].note) > 40
    assert s.seeds == 2 and s.scheduler.kind == "none"
    cfg = s.base_trial
    assert cfg.optim.warmup_steps in (0, 100) and cfg.engine.zero_stage == 0 and cfg.optim.max_steps >= 1000
    assert cfg.optim.schedule == "cosine" and cfg.optim.grad_clip == 1.0
    if not cfg.data.mixture:
        assert cfg.resolved_model.mean_shift and cfg.optim.lr == 2e-3


@pytest.mark.parametrize("name", PAPER + ["search/warmup_attention_conv_depth"])
def test_full_scale_is_the_papers_setting(name):
    s = spec(name, "full")
    for point in s.grid_points():
        cfg = s.trial_config(point)
        model = cfg.resolved_model
        assert cfg.scaling.use_gpu and cfg.scaling.num_workers == 8
        assert cfg.engine.precision == "auto"  # bf16 on GPU
        assert cfg.data.lq_patch == 64 and cfg.optim.max_steps >= 100_000
        assert cfg.data.train.endswith(f"sr_x{model.scale}/DF2K"), cfg.data.train
        sets = [Path(v).name for v in cfg.data.val]
        assert set(sets) <= set(TEST_SETS) and all(f"sr_x{model.scale}/" in v for v in cfg.data.val)
        if name in PAPER:
            assert sets == list(TEST_SETS)
            if "model.params" in point:  # a size sweep reaches below B on purpose, from 4M
                assert count_params(model) >= 3.8e6, f"{point}: not a paper-scale model"
            else:
                assert model.dim >= 180, f"{point}: not a paper-size model"


@pytest.mark.parametrize("name", MIXTURE)
def test_mixture_studies_full_scale_and_smoke(name):
    """Full scale: the U-shaped 22M network on 8 GPUs, real datasets; smoke: tiny_unet on the demo,
    every task's val set evaluated, synthetic stand-ins only where the demo cannot supply a task."""
    from hiir.data_prep.demo import DEGRADATION_SETS, DEMO_SETS

    cfg = spec(name, "full").trial_config(spec(name, "full").grid_points()[0])
    assert cfg.model["preset"] == "unet_deblur" and cfg.scaling.use_gpu and cfg.scaling.num_workers == 8
    assert cfg.data.train == "mixture" and len(cfg.data.mixture) == (2 if name.endswith("generalization") else 5)
    assert all(e["val"] for e in cfg.data.mixture)
    small = spec(name, "smoke").trial_config(spec(name, "smoke").grid_points()[0])
    assert small.model["preset"] == "tiny_unet"
    tasks, small_tasks = [e["task"] for e in cfg.data.mixture], [e["task"] for e in small.data.mixture]
    refs = {r[len("demo:"):] for e in small.data.mixture for r in (e["dataset"], *e["val"])}
    assert refs <= set(DEMO_SETS) | set(DEGRADATION_SETS)
    if name.endswith("generalization"):
        assert [Path(v).name for v in cfg.data.val] == ["BSD68_s15", "BSD68_s25", "BSD68_s50", "BSD68_q10",
                                                        "BSD68_q20", "BSD68_q30", "BSD68_q40"]
        assert [e["degrade"] for e in cfg.data.mixture] == [[{"kind": "noise", "sigma": [15.0, 75.0]}],
                                                          [{"kind": "jpeg", "quality": [10, 90]}]]
        assert not any(r.endswith("_synth") for r in refs)
        assert small_tasks == tasks
    else:
        assert [Path(v).name for v in cfg.data.val] == list(ALL_IN_ONE_SETS)
        # the smoke scale asks the three-task question; its note opens the report and says why not five
        assert small_tasks == ["dehaze", "derain", "denoise"] and tasks[:3] == small_tasks
        assert {r for r in refs if r.endswith("_synth")} == {"dehaze_synth", "derain_synth"}
        assert "SYNTHETIC STAND-INS" in (STUDIES / f"{name}.yaml").read_text()
        note = " ".join(spec(name, "smoke").scale["smoke"].note.split())
        assert "three-task" in note and "Motion blur and low light cannot be asked here" in note


def test_all_in_one_carries_the_seeds_table():
    e = spec("paper/all_in_one", "full").expected
    (row,) = e["rows"]
    assert row["match"] == {"model.preset": "unet_deblur"}
    assert row["values"] == {"SOTS": 31.42, "Rain100L": 38.67, "BSD68_s25": 31.58, "GoPro": 28.95, "LOL": 23.12,
                             "Average": 30.75, "params_M": 22}
    averages = {b["method"]: b["Average"] for b in e["baselines"]}
    assert averages == {"AirNet": 25.49, "IDR": 28.34, "PromptIR": 29.15, "AdaIR": 30.20}
    for b in [*e["baselines"], {"method": "Hi-IR", **row["values"]}]:  # Average is the mean of the five columns
        assert abs(sum(b[k] for k in ALL_IN_ONE_SETS) / 5 - b["Average"]) < 0.011, b["method"]


def resolved_trials() -> dict[str, dict]:
    """Every shipped study at every scale it defines (full too): each trial's train config, flattened;
    the first in full, the others as the keys where they differ from it (that keeps the snapshot small)."""
    import yaml

    out = {}
    for name in spec_names():
        raw = yaml.safe_load((STUDIES / f"{name}.yaml").read_text())
        for scale in ["full", *(raw.get("scale") or {})]:
            s = load_spec(STUDIES / f"{name}.yaml", scale=scale)
            first, *others = [flatten(s.trial_config(p).to_dict()) for p in s.finite_points()]
            out[f"{name}@{scale}"] = {"first": first,
                                      "others": [{k: v for k, v in o.items() if first[k] != v} for o in others]}
    return out


def test_shipped_studies_resolve_to_the_snapshot():
    """Each shipped study's trials are the ones the snapshot holds: a change to a spec, its scale profile or the
    loader that moves any trial's config shows up here. After a deliberate change, rewrite the snapshot with
    `HIIR_UPDATE_SNAPSHOT=1 pytest tests/test_studies.py -k snapshot` and review its diff."""
    import json
    import os

    path = Path(__file__).parent / "data" / "study_trials.json"
    now = resolved_trials()
    if os.environ.get("HIIR_UPDATE_SNAPSHOT"):
        path.write_text("{\n" + ",\n".join(f"{json.dumps(k)}:{json.dumps(v, sort_keys=True, separators=(',', ':'))}"
                                            for k, v in sorted(now.items())) + "\n}\n")
    snapshot = json.loads(path.read_text())
    assert sorted(now) == sorted(snapshot), "studies or scales were added or removed"
    for key, trials in now.items():
        assert json.loads(json.dumps(trials)) == snapshot[key], f"{key}: its trials changed"


def test_study_names_are_unique():
    names = [spec(n, "full").name for n in TRIAL_COUNTS]
    assert len(names) == len(set(names)), names


def test_train_configs_validate():
    paths = sorted((STUDIES / "train").glob("*.yaml"))
    assert paths
    for path in paths:
        load_config_file(path)


# ---------------------------------------------------------------- the paper's numbers


def _matches(match: dict, point: dict, cfg) -> bool:
    """As the report matches a trial: axis values first, else the trial's logged config params."""
    params = flatten(cfg.to_dict())
    return all(str(point.get(k, params.get(k))) == str(v) for k, v in match.items())


@pytest.mark.parametrize("name", PAPER)
def test_expected_rows_sit_beside_a_trial(name):
    s = spec(name, "full")
    rows = (s.expected or {}).get("rows") or []
    assert rows and s.expected.get("table"), "a paper study needs the paper's numbers under expected"
    axis_keys = {a.key for a in s.axes}
    points = [(p, s.trial_config(p)) for p in s.grid_points()]
    matched_by: dict[int, int] = {}
    for i, row in enumerate(rows):
        assert set(row) == {"match", "values"}, row
        assert row["match"] and set(row["match"]) <= axis_keys, f"row {i} matches a non-axis key: {row['match']}"
        assert row["values"] and set(row["values"]) <= {*TEST_SETS, "params_M"}, row["values"]
        assert all(isinstance(v, (int, float)) for v in row["values"].values())
        hits = [j for j, (p, cfg) in enumerate(points) if _matches(row["match"], p, cfg)]
        assert hits, f"expected row {row['match']} matches no trial of {name}"
        for j in hits:
            assert j not in matched_by, f"trial {points[j][0]} matches rows {matched_by[j]} and {i}"
            matched_by[j] = i


def test_expected_numbers_are_the_papers():
    """A few spot checks against the OpenReview text, so a typo in a spec shows up here."""
    def row(name, **match):
        rows = spec(name, "full").expected["rows"]
        return next(r["values"] for r in rows if r["match"] == match)

    assert row("paper/table3_scaling", **{"model.preset": "b_x3_conv1", "optim.warmup_steps": 0,
                                          "model.stage_conv": "conv1"})["Set5"] == 35.06
    assert row("paper/table3_scaling_x4", **{"model.preset": "l_x4_conv1", "optim.warmup_steps": 10000,
                                             "model.stage_conv": "conv1"})["Set5"] == 32.67
    assert row("paper/table5_attention_x4",
               **{"model.preset": "l_x4_conv1", "model.attention": "dot"})["Set5"] == 33.14
    assert row("paper/permutation", **{"model.mixer_l2": "none"})["Set5"] == 38.51
    assert row("paper/scale_110m", **{"model.preset": "xl_x2"})["Set5"] == 38.72
    assert row("paper/tree_depth", **{"model.preset": "depth4_x2"})["Set5"] == 38.41


# ---------------------------------------------------------------- bad specs


def _good() -> dict:
    return {
        "name": "bad-spec-test",
        "base": {"model": {"preset": "tiny_x2"}, "optim": {"max_steps": 20}},
        "datasets": {"train": "demo:sr_x2", "val": ["demo:sr_x2"]},
        "search": {"attention": ["dot", "cosine"]},
        "scale": {"smoke": {"set": {"optim.max_steps": 10}}},
    }


def _bad(**changes) -> dict:
    raw = copy.deepcopy(_good())
    for key, value in changes.items():
        raw[key] = value
    return raw


def test_the_good_spec_parses():
    assert parse_spec(_good()).trial_count == 2
    assert parse_spec(_good(), scale="smoke").base["optim"]["max_steps"] == 10


def test_a_scale_may_change_the_scheduler_and_samples():
    raw = _bad(scheduler={"kind": "asha", "grace_period": 5000},
               scale={"smoke": {"scheduler": {"grace_period": 4}, "num_samples": 3}})
    small = parse_spec(raw, scale="smoke")
    assert small.scheduler.grace_period == 4 and small.scheduler.kind == "asha" and small.trial_count == 6
    assert parse_spec(raw).scheduler.grace_period == 5000


@pytest.mark.parametrize("raw, scale, words", [
    (_bad(search={"atention": ["dot"]}), "full", ["search axis 'atention'", "did you mean", "attention"]),
    (_bad(search={"model.atention": ["dot"]}), "full", ["search axis 'model.atention'", "model.attention"]),
    (_bad(search={"attention": []}), "full", ["search.attention is empty"]),
    (_bad(search={"attention": {"choice": []}}), "full", ["search.attention is empty"]),
    (_bad(search={"attention": {"normal": [0, 1]}}), "full", ["search.attention", "'normal'", "choice"]),
    (_bad(search={"attention": ["dot", "cosin"]}), "full", ["model.attention='cosin'", "dot, cosine"]),
    (_bad(scheduler={"kind": "hyperband"}), "full", ["scheduler.kind='hyperband'", "asha, none"]),
    (_bad(scheduler={"kind": "asha", "grace": 3}), "full", ["scheduler.grace", "grace_period"]),
    (_bad(serach={"attention": ["dot"]}), "full", ["serach is not a study field", "did you mean search"]),
    (_good(), "tiny", ["scale='tiny' is not defined", "full, smoke"]),
    (_bad(mode="maximum"), "full", ["mode='maximum'", "max, min"]),
    ({k: v for k, v in _good().items() if k != "base"}, "full", ["base is missing"]),
    (_bad(scale={"smoke": {"preset": {"b_x2_conv3": "tiny_x2"}}}), "smoke", ["scale.smoke.preset", "presets"]),
    (_bad(scale={"smoke": {"presets": {"b_x2_conv9": "tiny_x2"}}}), "smoke", ["'b_x2_conv9'", "hiir models"]),
])
def test_bad_specs_fail_with_one_clear_line(raw, scale, words):
    with pytest.raises(ConfigError) as info:
        parse_spec(raw, scale=scale)
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_a_scale_profile_applies_under_the_blocks_own_keys():
    raw = _bad(scale={"smoke": {"profile": "smoke", "set": {"optim.max_steps": 10, "tracking.experiment": "mine"}}})
    small = parse_spec(raw, scale="smoke")
    assert small.base["scaling"] == {"num_workers": 1, "cpus_per_worker": 1, "use_gpu": False}
    assert small.base["data"]["batch_size"] == 8 and small.base["checkpoint"] == {"keep": 1}
    assert small.base["tracking"] == {"experiment": "mine", "log_every": 50}  # the block's own key wins
    assert small.base["optim"]["max_steps"] == 10 and small.base["optim"]["lr"] == 2e-3 and small.seeds == 2
    assert "scaling" not in parse_spec(raw).base  # the full scale never sees it
    with pytest.raises(ConfigError, match=r"^scale profile 'smok' is not one of studies/profiles/: smoke$"):
        parse_spec(_bad(scale={"smoke": {"profile": "smok"}}), scale="smoke")


def test_finite_points_say_when_they_stop_short(caplog):
    s = parse_spec(_bad(search={"attention": ["dot", "cosine"], "warmup": {"choice": [0, 1, 2]}}))
    with caplog.at_level("WARNING", logger="hiir.study"):
        assert len(s.finite_points(limit=4)) == 4
    assert "6 finite points" in caplog.text and "only the first 4" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hiir.study"):
        assert len(s.finite_points()) == 6
    assert not caplog.text


def test_the_base_trial_is_built_once_and_is_the_first_finite_point():
    s = parse_spec(_good())
    assert s.base_trial is s.base_trial and s.base_trial == s.trial_config(s.finite_points()[0])


def test_study_json_reads_back_with_the_same_keys(tmp_path):
    """study.json keeps its keys; one written before max_concurrent and transfer_from existed still reads."""
    import json

    from hiir.platform.study.state import StudyState, read_state, state_spec, write_state

    keys = ["name", "base", "raw", "scale", "overrides", "workdir", "tracking_uri", "experiment", "parent_run_id",
            "trial_storage", "tune_path", "search", "spec_path", "max_concurrent", "transfer_from"]
    old = {"name": "t", "base": {"model": {"preset": "tiny_x2"}}, "raw": _good(), "scale": "smoke",
           "overrides": ["optim.lr=0.001"], "workdir": str(tmp_path), "tracking_uri": "sqlite:///x.db",
           "experiment": "hiir", "parent_run_id": "abc", "trial_storage": "/s/t/trials", "tune_path": "/s/t",
           "search": "basic", "spec_path": "t.yaml"}
    (tmp_path / "study.json").write_text(json.dumps(old, indent=1))
    state = read_state(tmp_path)
    assert isinstance(state, StudyState) and state.max_concurrent is None and state.transfer_from is None
    assert state_spec(state).base["optim"] == {"max_steps": 10, "lr": 0.001}
    write_state(tmp_path / "again", state)
    assert list(json.loads((tmp_path / "again" / "study.json").read_text())) == keys
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.json").write_text(json.dumps({**old, "tune_path": None}))
    with pytest.raises(HiirError, match=r"study.json is not a study's state: tune_path"):
        read_state(tmp_path / "bad")


def test_a_bad_spec_file_is_named_in_its_error(tmp_path):
    import yaml

    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(_bad(search={"tree_dept": [2, 3]})))
    with pytest.raises(ConfigError, match=r"^typo\.yaml: search axis 'tree_dept' .*tree_depth"):
        load_spec(path)


def test_a_missing_dataset_is_caught_before_any_trial(tmp_path):
    """parse_spec cannot know the cluster's files; the driver checks every set before Tune starts."""
    from hiir.data_prep import DatasetError
    from hiir.platform.train.checks import resolve_datasets

    missing = tmp_path / "sr_x2" / "DF2K"
    cfg = load_config({"data": {"train": str(missing), "val": [str(tmp_path / "sr_x2" / "Set5")]}})
    with pytest.raises((DatasetError, HiirError)) as info:
        resolve_datasets(cfg, tmp_path)
    message = str(info.value)
    assert str(missing) in message and "\n" not in message
    assert "hiir data build" in message


# ---------------------------------------------------------------- trial values and the schema


def test_numpy_trial_values_apply_as_they_are():
    """Tune hands numpy scalars (randint, uniform); they apply without a round trip through text, and the
    trial's config holds plain Python values (it is logged, checkpointed and sent to the workers as JSON)."""
    import json

    import numpy as np

    s = parse_spec(_good())
    cfg = s.trial_config({"optim.lr": np.float64(0.1), "optim.warmup_steps": np.int64(7),
                          "model.tree_depth": np.int64(2), "model.attention": np.str_("cosine")})
    assert cfg.optim.lr == 0.1 and cfg.optim.warmup_steps == 7 and type(cfg.optim.warmup_steps) is int
    assert cfg.resolved_model.tree_depth == 2 and type(cfg.model["tree_depth"]) is int
    assert load_config(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("kind", ["train", "study"])
def test_every_yaml_passes_its_json_schema(kind):
    """The schema an editor checks with accepts every file the code accepts (and rejects a typo)."""
    import json

    import yaml

    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((STUDIES / "schema" / f"{kind}.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    paths = [p for p in sorted(STUDIES.rglob("*.yaml"))
             if (p.relative_to(STUDIES).parts[0] == "train") == (kind == "train") and "profiles" not in p.parts]
    assert paths
    for path in paths:
        raw = yaml.safe_load(path.read_text())
        assert not list(validator.iter_errors(raw)), path
        raw["optim" if kind == "train" else "base"] = {"warmpu_steps": 5}
        assert list(validator.iter_errors(raw)), path
    if kind == "study":  # a scale profile is a scale block
        scale = jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/Scale"})
        for path in sorted((STUDIES / "profiles").glob("*.yaml")):
            raw = yaml.safe_load(path.read_text())
            assert not list(scale.iter_errors(raw)), path
            assert list(scale.iter_errors({**raw, "sett": {}})), path


# ---------------------------------------------------------------- size, seeds, budgets, traps


def test_size_by_parameter_count_solves_a_family_per_trial():
    raw = _bad(search={"size": {"params": ["0.05M", "0.1M", "0.2M"], "family": "tiny"}},
               base={"model": {"preset": "tiny_x2", "attention": "cosine"}, "optim": {"max_steps": 20}})
    s = parse_spec(raw)
    assert s.trial_count == 3 and s.base["model"] == {"attention": "cosine", "family": "tiny"}
    (axis,) = s.axes
    assert axis.key == "model.params" and axis.values == ["0.05M", "0.1M", "0.2M"]
    from hiir.models import count_params, parse_size

    for point in s.grid_points():
        model = s.trial_config(point).resolved_model
        assert model.attention == "cosine"  # the base's overrides are kept
        assert abs(count_params(model) / parse_size(point["model.params"]) - 1) <= 0.05
    sampled = parse_spec(_bad(search={"size": {"params": {"loguniform": ["50k", "0.2M"]}, "family": "tiny"}}))
    assert sampled.axes[0].kind == "loguniform" and sampled.axes[0].values == [50_000, 200_000]
    with pytest.raises(ConfigError, match=r"search.size by parameter count is \{params"):
        parse_spec(_bad(search={"size": {"params": ["1M"], "family": "tiny", "depth": 2}}))
    with pytest.raises(ConfigError, match="model.family='c' is not a size family"):
        parse_spec(_bad(search={"size": {"params": ["1M"], "family": "c"}}))


def test_seeds_replicate_every_cell():
    s = parse_spec({**_good(), "seeds": 3, "base": {**_good()["base"], "seed": 10}})
    assert s.trial_count == 6 and s.seeds == 3
    assert [a.values for a in s.axes if a.key == "seed"] == [[10, 11, 12]]
    assert {(p["model.attention"], p["seed"]) for p in s.grid_points()} == \
        {(a, k) for a in ("dot", "cosine") for k in (10, 11, 12)}
    assert parse_spec({**_good(), "seeds": 3, "scale": {"smoke": {"seeds": 2}}}, scale="smoke").trial_count == 4
    with pytest.raises(ConfigError, match="seeds and a seed axis exclude each other"):
        parse_spec({**_good(), "seeds": 2, "search": {"seed": [0, 1]}})


def test_budget_axis_is_training_flops():
    s = parse_spec(_bad(search={"budget": [1e13, 3e13], "size": {"params": ["0.05M", "0.1M"], "family": "tiny"}}))
    assert {a.key for a in s.axes} == {"budget.flops", "model.params"} and s.trial_count == 4
    assert s.trial_config({"budget.flops": 3e13, "model.params": "0.1M"}).budget.flops == 3e13


def test_isoflop_step_counts_spend_the_budget_as_counted_on_one_real_step():
    """The property itself: max_steps x the FLOPs of one training step, counted by torch's flop counter on the
    built model (forward and backward of the trial's batch and patch, every worker), is the budget, to within
    half a step (rounding) and 1% (the planner's backward = 2 x forward)."""
    s = parse_spec(_bad(search={"budget": [1e13, 3e13], "size": {"params": ["0.05M", "0.4M"], "family": "tiny"}}))
    for point in s.grid_points():
        cfg = s.trial_config(point)
        steps = apply_budget(cfg, model_stats(cfg)["flops_per_step"]).optim.max_steps
        model_cfg, patch = cfg.resolved_model, cfg.data.lq_patch
        with torch.device("meta"):
            model = build(model_cfg)
        # summary.model_flops is FlopCounterMode, with torch's formula for a grouped conv's backward corrected
        step = cfg.scaling.num_workers * model_flops(model, (cfg.data.batch_size, model_cfg.in_channels, patch, patch),
                                                     backward=True)
        budget = point["budget.flops"]
        assert abs(steps * step - budget) <= 0.5 * step + 0.01 * budget, (point, steps, step)
    cfg = s.trial_config({"budget.flops": 1e13, "model.params": "0.4M"})
    with pytest.raises(HiirError, match=r"budget.flops=1e\+13 buys 0 steps"):
        apply_budget(cfg, 1e14)


def test_a_trial_whose_patch_is_smaller_than_its_groups_is_refused_naming_the_axis_values():
    raw = _bad(search={"tree_depth": [3, 4]}, datasets={"train": "demo:sr_x2", "val": ["demo:sr_x2"], "lq_patch": 8},
               base={"model": {"preset": "tiny_x2"}, "optim": {"max_steps": 20}})
    with pytest.raises(ConfigError, match=r"trial \{'model.tree_depth': 4\}: data.lq_patch=8 is smaller than the "
                                          r"model's pad multiple 16 .*model.patch2.*data.lq_patch >= 16"):
        parse_spec(raw)
    ok = _bad(search={"tree_depth": {"choice": [3, 4]}},
              datasets={"train": "demo:sr_x2", "val": ["demo:sr_x2"], "lq_patch": 16})
    assert parse_spec(ok).trial_count == 1
    sampled = _bad(search={"tree_depth": {"choice": [3, 4]}},
                   datasets={"train": "demo:sr_x2", "val": ["demo:sr_x2"], "lq_patch": 8})
    with pytest.raises(ConfigError, match=r"model.tree_depth': 4.*lq_patch=8"):  # a sampled choice counts too
        parse_spec(sampled)


def test_depth_two_with_linear_stage_ends_is_warned_about(caplog):
    raw = _bad(search={"tree_depth": [2, 3], "conv": ["conv1", "linear"]})
    with caplog.at_level("WARNING", logger="hiir.study"):
        parse_spec(raw)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "hiir.study"]
    assert "model.tree_depth=2, model.stage_conv=linear" in warning and "across P x P patch borders" in warning
    assert "tree_depth=3" not in warning and "conv1" not in warning


def test_asha_with_seeds_is_refused_and_sizes_within_5_percent_are_one_size():
    from hiir.platform.study.axes import size_classes

    with pytest.raises(ConfigError, match=r"scheduler.kind=asha with seeds > 1 .* biases its mean"):
        parse_spec({**_good(), "seeds": 2, "scheduler": {"kind": "asha"}})
    # dot vs cosine attention (16 logit scales more) is one size; 3.5x is another
    assert size_classes([119_347, 119_331, 444_803, 460_000, 480_000]) == \
        {119_331: 119_331, 119_347: 119_331, 444_803: 444_803, 460_000: 444_803, 480_000: 480_000}
