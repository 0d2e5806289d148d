"""On-the-fly degradation, task mixtures, per-task metrics, synthetic stand-ins.

Everything but the last test is fast and Ray-free: the demo's degradation sets build in-process
(`build_demo(keys=...)`, about a second). The last test is one real tiny mixture run through
`fit_run`, checking that per-task metrics reach MLflow under distinct names.
"""
from __future__ import annotations

import numpy as np
import pytest

from hiir.data_prep import DatasetError, build_demo, imresize, load_manifest, to_uint8
from hiir.data_prep.demo import DEGRADATION_SETS
from hiir.data_prep.online import MixtureReader, OnlineDegrade, make_train_reader, validate_pipeline
from hiir.platform.config import load_config, val_tasks
from hiir.platform.errors import ConfigError

NOISE_JPEG = [{"kind": "noise", "sigma": [15, 75]}, {"kind": "jpeg", "quality": [10, 90]}]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's degradation sets (HR-only train, val per level, synthetic stand-ins), built in-process."""
    return build_demo(tmp_path_factory.mktemp("online") / "data", progress=False, keys=list(DEGRADATION_SETS))


def reader(demo, *, rank=0, world=2, steps=NOISE_JPEG, batch=8, patch=24, seed=0, key="hr"):
    return make_train_reader(str(demo[key]), degrade=steps, rank=rank, world_size=world, batch_size=batch,
                             lq_patch=patch, seed=seed)


def mixture(demo, weights=(3.0, 1.0), **kw):
    entries = [{"task": "denoise", "dataset": str(demo["hr"]), "weight": weights[0],
                "degrade": [{"kind": "noise", "sigma": [15, 50]}]},
               {"task": "derain", "dataset": str(demo["derain_synth"]), "weight": weights[1]}]  # paired, pre-built
    return make_train_reader("mixture", mixture=entries, world_size=kw.pop("world", 2), batch_size=kw.pop("batch", 8),
                             lq_patch=24, seed=kw.pop("seed", 0), **kw)


# ---------------------------------------------------------------- manifests


def test_demo_sets_record_online_levels_and_synthetic_stand_ins(demo):
    hr = load_manifest(demo["hr"])
    assert hr.task == "online" and hr.degradation["online"] is True and hr.rows("train") > 0 and hr.rows("val") == 0
    assert load_manifest(demo["denoise_s15"]).degradation["sigma"] == 15
    assert load_manifest(demo["jpeg_q30"]).degradation["quality"] == 30
    for key in ("derain_synth", "dehaze_synth", "deblur_synth", "lowlight_synth"):
        m = load_manifest(demo[key])
        assert m.degradation["synthetic_stand_in"] is True and m.rows("train") and m.rows("val") == 3, key
    assert not load_manifest(demo["jpeg_q10"]).degradation.get("synthetic_stand_in")


def test_online_build_records_its_pipeline_and_the_reader_uses_it(demo, tmp_path):
    from hiir.data_prep import build_dataset

    src = demo["hr"].parent / "demo_photos_train"
    m = build_dataset(src, tmp_path / "hr", "online", pipeline=[{"kind": "noise", "sigma": [15, 75]}],
                      sub_size=96, step=96, local=True, progress=False)
    assert m.degradation == {"kind": "online", "online": True, "pipeline": [{"kind": "noise", "sigma": [15.0, 75.0]}]}
    r = make_train_reader(str(tmp_path / "hr"), rank=0, world_size=1, batch_size=4, lq_patch=16, seed=0)
    lq, gt = r.get_batch(0)
    assert lq.shape == gt.shape == (4, 16, 16, 3) and not np.array_equal(lq, gt)
    with pytest.raises(DatasetError, match="online.*data.degrade"):  # no pipeline anywhere
        make_train_reader(str(demo["hr"]), rank=0, world_size=1, batch_size=4, lq_patch=16, seed=0)
    with pytest.raises(DatasetError, match="train split only"):
        build_dataset(src, tmp_path / "bad", "online", split="both", local=True, progress=False)


# ---------------------------------------------------------------- the stream


def test_stream_is_identical_across_resume_and_differs_across_ranks(demo):
    a = reader(demo)
    first = [a.get_batch(s) for s in range(4)]
    fresh = reader(demo)  # a resumed run: new process, new reader, same step counter
    for s in (3, 1, 2, 0):  # any order: the batch is a function of (seed, rank, step) only
        lq, gt = fresh.get_batch(s)
        np.testing.assert_array_equal(lq, first[s][0])
        np.testing.assert_array_equal(gt, first[s][1])
    other = reader(demo, rank=1).get_batch(0)
    assert not np.array_equal(other[0], first[0][0]) and not np.array_equal(other[1], first[0][1])
    assert not np.array_equal(first[0][0], first[1][0])
    assert not np.array_equal(reader(demo, seed=1).get_batch(0)[0], first[0][0])
    m1, m2 = mixture(demo, rank=0), mixture(demo, rank=0)
    for s in (5, 0):
        np.testing.assert_array_equal(m1.get_batch(s)[0], m2.get_batch(s)[0])
        assert m1.counts(s) == m2.counts(s)
    assert not np.array_equal(mixture(demo, rank=1).get_batch(5)[0], m1.get_batch(5)[0])


def test_sigma_and_quality_stay_in_range_and_cover_it(demo):
    r = reader(demo, batch=16, patch=16)
    sigmas, qualities = [], []
    for step in range(40):
        r.get_batch(step)
        sigmas += [p["noise.sigma"] for p in r.degrade.last_params]
        qualities += [p["jpeg.quality"] for p in r.degrade.last_params]
    sigmas, qualities = np.array(sigmas), np.array(qualities)
    assert sigmas.min() >= 15 and sigmas.max() <= 75 and qualities.min() >= 10 and qualities.max() <= 90
    assert np.all(np.histogram(sigmas, bins=6, range=(15, 75))[0] > 0)  # every tenth of the range is hit
    assert np.all(np.histogram(qualities, bins=8, range=(10, 90))[0] > 0)
    assert sigmas.min() < 18 and sigmas.max() > 72 and qualities.min() <= 12 and qualities.max() >= 88
    assert qualities.dtype.kind == "i"


def test_noise_strength_follows_the_drawn_sigma():
    hook = OnlineDegrade([{"kind": "noise", "sigma": [15, 75]}])
    gt = np.full((32, 64, 64, 3), 128, np.uint8)  # mid-grey: no clipping for sigma <= 75 at 2.5 sd... mostly
    lq, out_gt = hook(None, gt, np.random.default_rng(0))
    assert out_gt is gt
    for img, p in zip(lq, hook.last_params):
        assert abs(np.std(img.astype(float) - 128) - p["noise.sigma"]) < 0.1 * p["noise.sigma"] + 1


def test_bicubic_step_is_matlab_imresize_and_sets_the_scale(demo):
    hook = OnlineDegrade([{"kind": "bicubic", "scale": 4}])
    assert hook.scale == 4
    gt = (np.random.default_rng(0).random((2, 32, 32, 3)) * 255).astype(np.uint8)
    lq, _ = hook(None, gt, np.random.default_rng(0))
    np.testing.assert_array_equal(lq[1], to_uint8(imresize(gt[1], 1 / 4)))
    lq, gt = reader(demo, steps=[{"kind": "bicubic", "scale": 2}, {"kind": "noise", "sigma": 10}],
                    patch=16).get_batch(0)
    assert lq.shape == (8, 16, 16, 3) and gt.shape == (8, 32, 32, 3)


# ---------------------------------------------------------------- mixtures


def test_mixture_composition_matches_the_weights(demo):
    r = mixture(demo, weights=(3.0, 1.0), rank=0, batch=8)
    steps = 500
    counts = np.array([[c["denoise"], c["derain"]] for c in (r.counts(s) for s in range(steps))])
    assert (counts.sum(1) == 8).all()
    frac = counts[:, 0].sum() / (8 * steps)
    sd = np.sqrt(0.75 * 0.25 / (8 * steps))
    assert abs(frac - 0.75) < 4 * sd, frac
    lq, gt = r.get_batch(7)
    assert lq.shape == gt.shape == (8, 24, 24, 3)
    assert isinstance(r, MixtureReader) and r.tasks == ["denoise", "derain"]


def test_mixture_tasks_must_share_a_scale(demo):
    entries = [{"task": "sr", "dataset": str(demo["hr"]), "weight": 1, "degrade": [{"kind": "bicubic", "scale": 2}]},
               {"task": "derain", "dataset": str(demo["derain_synth"]), "weight": 1}]
    with pytest.raises(DatasetError, match="one scale"):
        make_train_reader("mixture", mixture=entries, rank=0, world_size=1, batch_size=4, lq_patch=16, seed=0)


# ---------------------------------------------------------------- config


def test_config_mixture_is_validated_and_round_trips():
    raw = {"data": {"mixture": [
        {"task": "denoise", "dataset": "demo:hr", "weight": 2, "degrade": [{"kind": "noise", "sigma": [15, 75]}],
         "val": ["demo:denoise_s15", "demo:denoise_s50"]},
        {"task": "jpeg", "dataset": "demo:hr", "degrade": [{"kind": "jpeg", "quality": [10, 90]}],
         "val": ["demo:jpeg_q10"]}]}}
    cfg = load_config(raw)
    assert cfg.data.train == "mixture"
    assert cfg.data.val == ["demo:denoise_s15", "demo:denoise_s50", "demo:jpeg_q10"]  # no default sr set sneaks in
    assert cfg.data.mixture[1]["weight"] == 1.0
    assert cfg.data.mixture[1]["degrade"] == [{"kind": "jpeg", "quality": [10, 90]}]
    assert val_tasks(cfg.data) == {"demo:denoise_s15": "denoise", "demo:denoise_s50": "denoise",
                                   "demo:jpeg_q10": "jpeg"}
    assert load_config(cfg.to_dict()) == cfg
    assert load_config({"data": {"train": "demo:sr_x2"}}).data.mixture == []  # single-set configs unchanged


@pytest.mark.parametrize("data, words", [
    ({"degrade": [{"kind": "nois", "sigma": 5}]}, ["data.degrade[0].kind='nois'", "noise"]),
    ({"degrade": [{"kind": "jpeg", "quality": [10, 190]}]}, ["data.degrade[0].quality", "<= 100"]),
    ({"degrade": [{"kind": "noise", "sigma": [15, 75]}, {"kind": "bicubic", "scale": 2}]},
     ["data.degrade[1]", "first"]),
    ({"degrade": [{"kind": "noise", "sigma": 5, "q": 1}]}, ["data.degrade[0].q"]),
    ({"train": "demo:sr_x2", "mixture": [{"task": "a", "dataset": "x"}]}, ["data.train='demo:sr_x2'", "data.mixture"]),
    ({"mixture": [{"task": "a"}]}, ["data.mixture[0].dataset is missing"]),
    ({"mixture": [{"task": "a", "dataset": "x", "weight": 0}]}, ["data.mixture[0].weight"]),
    ({"mixture": [{"task": "a", "dataset": "x", "wieght": 1}]}, ["data.mixture[0].wieght"]),
    ({"mixture": [{"task": "a", "dataset": "x"}, {"task": "a", "dataset": "y"}]}, ["data.mixture[1].task", "unique"]),
    ({"mixture": [{"task": "a", "dataset": "x", "degrade": [{"kind": "jpeg"}]}]},
     ["data.mixture[0].degrade[0].quality is missing"]),
])
def test_bad_data_sections_fail_naming_the_field(data, words):
    with pytest.raises(ConfigError) as info:
        load_config({"data": data})
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_validate_pipeline_normalises_to_ranges():
    assert validate_pipeline([{"kind": "noise", "sigma": 25}, {"kind": "jpeg", "quality": [10, 90]}]) == \
        [{"kind": "noise", "sigma": [25.0, 25.0]}, {"kind": "jpeg", "quality": [10, 90]}]


def test_resolve_datasets_builds_demo_levels_and_checks_online_sets(tmp_path):
    from hiir.platform.errors import HiirError
    from hiir.platform.train.checks import resolve_datasets, synthetic_val_sets

    cfg = load_config({"data": {"mixture": [
        {"task": "denoise", "dataset": "demo:hr", "degrade": [{"kind": "noise", "sigma": 25}],
         "val": ["demo:denoise_s15"]},
        {"task": "derain", "dataset": "demo:derain_synth", "val": ["demo:derain_synth"]}]}})
    out = resolve_datasets(cfg, tmp_path)
    assert out.data.mixture[0]["dataset"].endswith("demo_hr") and out.data.val[1].endswith("demo_derain_synth")
    assert synthetic_val_sets(out) == ["demo_derain_synth"]
    assert val_tasks(out.data)[out.data.val[0]] == "denoise"
    with pytest.raises(HiirError, match=r"data\.degrade"):  # online set, no pipeline
        resolve_datasets(load_config({"data": {"train": "demo:hr", "val": ["demo:denoise_s15"]}}), tmp_path)
    with pytest.raises(HiirError, match="unknown demo dataset 'demo:rain'"):
        resolve_datasets(load_config({"data": {"train": "demo:rain"}}), tmp_path)


# ---------------------------------------------------------------- evaluation and report


def test_per_task_means_and_set_metrics(demo):
    import torch

    from hiir.models import build
    from hiir.platform.evaluation.evaluate import evaluate_datasets

    torch.manual_seed(0)
    sets = [str(demo[k]) for k in ("denoise_s15", "denoise_s50", "derain_synth")]
    tasks = {sets[0]: "denoise", sets[1]: "denoise", sets[2]: "derain"}
    res = evaluate_datasets(build("tiny_unet").eval(), sets, max_images=1, tasks=tasks).metrics
    for name in ("demo_denoise_s15", "demo_denoise_s50", "demo_derain_synth"):
        assert f"val/{name}/psnr" in res and f"val/{name}/ssim" in res
    assert res["val_task/denoise/psnr"] == pytest.approx((res["val/demo_denoise_s15/psnr"]
                                                          + res["val/demo_denoise_s50/psnr"]) / 2)
    assert res["val_task/derain/psnr"] == pytest.approx(res["val/demo_derain_synth/psnr"])
    # an untrained net: lighter noise, higher PSNR
    assert res["val/demo_denoise_s15/psnr"] > res["val/demo_denoise_s50/psnr"]


def test_report_marks_synthetic_sets_and_shows_task_means():
    from types import SimpleNamespace

    from hiir.platform.results.analysis import analyse
    from hiir.platform.results.markdown import render_markdown, results_table
    from hiir.platform.results.summary import StudyLine, render_summary
    from hiir.platform.results.trials import Trial

    params = {"model.num_params": "220000", "resolved_model.scale": "1",
              "data.val": "['/w/demo_derain_synth', '/w/demo_denoise_s25']"}
    t = Trial("r1", "trial", "FINISHED", {"model.preset": "tiny_unet"}, params,
              {"val/demo_derain_synth/psnr": 20.0, "val/demo_derain_synth/psnr_y": 21.5,  # x1: RGB is the headline
               "val/demo_denoise_s25/psnr": 28.0, "val_task/derain/psnr": 20.0,
               "val_task/denoise/psnr": 28.0, "val_psnr": 24.0}, ([], []), synthetic=("demo_derain_synth",))
    spec = SimpleNamespace(name="s", question="q", expected={
        "table": "all-in-one", "note": "",
        "rows": [{"match": {"model.preset": "unet_deblur"}, "values": {"SOTS": 31.42}}],
        "baselines": [{"method": "AirNet", "params_M": 9, "SOTS": 21.04}]})
    analysis = analyse([t], parent_metrics={}, parent_tags={})
    row = results_table(spec, analysis)[0]
    assert row["demo_derain_synth*"] == "20.00" and row["demo_denoise_s25"] == "28.00"
    sets = [k for k in row if k.startswith("demo_")]
    assert sets == ["demo_derain_synth*", "demo_denoise_s25"]  # the config's val order (the paper's columns)
    assert row["derain (mean)"] == "20.00" and row["mean PSNR"] == "24.00"
    text = render_markdown(spec, analysis, [])
    assert "synthetic stand-in" in text and "demo_derain_synth" in text and "AirNet" in text

    # against the degraded input: the mean over sets is above it, derain is not, and the answer says so
    base = {"baseline/val/demo_derain_synth/psnr": 20.5, "baseline/val/demo_denoise_s25/psnr": 20.2,
            "baseline/val_psnr": 20.35}
    analysis = analyse([t], parent_metrics=base, parent_tags={"hiir.baseline": "the degraded input"})
    baseline_row = results_table(spec, analysis)[0]
    assert baseline_row["demo_derain_synth*"] == "20.50"  # the trials' column, not one of its own
    text = render_markdown(spec, analysis, [])
    assert "Every finished trial is above the degraded input (20.35 dB)." in text
    assert ("On `demo_derain_synth`, 1 of 1 finished trials score at or below the degraded input (20.50 dB there): "
            "the mean over sets hides that.") in text and "On `demo_denoise_s25`" not in text
    assert analysis.sets_below == {"demo_derain_synth": (1, 20.5)}
    # and a folder run's summary carries it beside the count by the mean (results.json -> StudyLine)
    line = StudyLine("all_in_one", "all_in_one.yaml", "finished", 200.0, trials=1, finished=1, seeds=1,
                     sets_below={"demo_derain_synth": 1})
    assert line.words.startswith("finished in 3m20s: 1 of 1 trials finished, 1 at or below it on demo_derain_synth,")
    assert "| all_in_one | finished | 3m20s | 1/1 | 1 | 0 | demo_derain_synth (1) |" in render_summary("s", [line])


# ---------------------------------------------------------------- one real run


@pytest.mark.slow
def test_mixture_run_logs_per_task_metrics_and_batch_composition(workdir, train_config):
    from hiir.platform import tracking
    from hiir.platform.train.fit import fit_run

    cfg = train_config(
        "online-mixture", model={"preset": "tiny_unet"}, optim={"max_steps": 10, "warmup_steps": 2},
        data={"train": "mixture", "val": [], "batch_size": 4, "lq_patch": 32, "mixture": [
            {"task": "denoise", "dataset": "demo:hr", "weight": 1, "degrade": [{"kind": "noise", "sigma": [15, 50]}],
             "val": ["demo:denoise_s15", "demo:denoise_s50"]},
            {"task": "derain", "dataset": "demo:derain_synth", "weight": 1, "val": ["demo:derain_synth"]}]},
        scaling={"num_workers": 1}, eval={"every": 10, "max_images": 1}, tracking={"log_every": 5, "sample_images": 0})
    result = fit_run(cfg, workdir=workdir)
    run = tracking.Store(tracking.resolve_tracking_uri(workdir, None)).get_run(result.run_id)
    m = run.data.metrics
    names = ["val/demo_denoise_s15/psnr", "val/demo_denoise_s50/psnr", "val/demo_derain_synth/psnr",
             "val_task/denoise/psnr", "val_task/derain/psnr", "val_psnr", "batch_frac/denoise", "batch_frac/derain"]
    missing = [n for n in names if n not in m]
    assert not missing, f"missing {missing}; have {sorted(m)}"
    assert m["val/demo_denoise_s15/psnr"] != m["val/demo_derain_synth/psnr"]
    assert m["batch_frac/denoise"] + m["batch_frac/derain"] == pytest.approx(1.0)
    assert run.data.tags[tracking.SYNTHETIC_TAG] == "demo_derain_synth"
