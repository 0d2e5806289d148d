"""The study report from a real MLflow store: the baseline row, trials at or below it flagged, seed noise and
the effects judged against it, the size law with its held-out prediction, and the answer on the study run.
The runs are written as trials write them (params, metrics, tags, the per-image artifact), without training."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hiir.platform import tracking
from hiir.platform.results.report import write_report

SIZES = {"0.05M": 50_730, "0.1M": 101_900, "0.2M": 203_900, "0.4M": 407_800}
IMAGES = ("chelsea", "coins", "rocket")
BICUBIC = 33.13


def _true_psnr(n: float) -> float:
    return float(-10 * np.log10(1.5e-2 * n ** -0.4 + 2.5e-4))  # a saturating power law in MSE: 33.5-34.6 dB


def _study(tmp_path: Path, psnr_of, *, seeds=(0, 1), attention=("dot",),
           isolated=(), sizes=SIZES) -> tuple[tracking.Store, str]:
    store = tracking.Store(tracking.default_tracking_uri(tmp_path))
    exp = store.experiment("report-test", tmp_path)
    parent = store.create_study_run(exp, "report-test", scale="full", question="does PSNR grow with size?", params={})
    now = int(time.time() * 1000)
    store.log_metrics(parent, {f"{tracking.BASELINE_PREFIX}val/demo_sr_x2/psnr_y": BICUBIC,
                               f"{tracking.BASELINE_PREFIX}val_psnr": BICUBIC}, 0, now)
    store.set_tags(parent, {tracking.BASELINE_TAG: "bicubic"})
    rng = np.random.default_rng(0)
    image_offset = {i: o for i, o in zip(IMAGES, (1.5, -2.0, 0.5))}  # images differ in difficulty
    for target, count in sizes.items():
        for att in attention:
            for seed in seeds:
                axes = {"model.params": target, "seed": seed} if len(seeds) > 1 else {"model.params": target}
                if len(attention) > 1:
                    axes["model.attention"] = att
                trial_id = f"report-test_{len(store.children(parent)):05d}"  # Tune's ids: the space's order
                psnr = psnr_of(count, att) + rng.normal(0, 0.02)
                per_image = {i: psnr + o + rng.normal(0, 0.01) for i, o in image_offset.items()}
                mean = float(np.mean(list(per_image.values())))
                run_id, _ = store.find_or_create_run(exp, trial_id,
                                                     {**tracking.trial_tags("report-test", trial_id, axes),
                                                      tracking.PARENT_TAG: parent})
                store.log_params(run_id, {"model.num_params": count, "model.family": "tiny", "flops_per_step": 1e9,
                                          "resolved_model.scale": 2, "resolved_model.in_channels": 3,
                                          "resolved_model.tree_depth": 3, "data.val": "['/w/demo_sr_x2']",
                                          "resolved_model.crosses_patches": target not in isolated})
                store.log_metrics(run_id, {"val/demo_sr_x2/psnr_y": mean, "val_psnr": mean, "step": 1000,
                                           "val_mse": 10 ** (-mean / 10), "loss": 0.05}, 1000, now)
                artifact = tmp_path / "art" / trial_id / tracking.VAL_IMAGES
                artifact.parent.mkdir(parents=True)
                artifact.write_text(json.dumps({"demo_sr_x2": per_image}))
                store.log_artifact(run_id, artifact)
                store.close(run_id, "FINISHED")
    return store, parent


def _spec():
    return SimpleNamespace(name="report-test", question="does PSNR grow with size?", expected=None, mode="max")


def test_report_answers_with_the_baseline_the_law_and_the_held_out_size(tmp_path):
    store, parent = _study(tmp_path, lambda n, att: _true_psnr(n) + (0.3 if att == "cosine" else 0.0),
                           attention=("dot", "cosine"))
    report = write_report(tmp_path / "out", spec=_spec(), tracking_uri=store.uri, parent_run_id=parent)
    text = report.read_text()
    answer = text.split("## Results")[0]
    assert "against bicubic (33.13 dB)" in answer and "Every finished trial is above bicubic" in answer
    assert "PSNR rises with size, +" in answer and "dB per doubling [+" in answer and "Fitted exponent alpha" in answer
    assert "Held out: the largest size (0.4078M)" in answer and "prediction interval" in answer
    assert "Beyond seed noise: model.attention cosine vs dot" in answer  # 0.3 dB over 0.02 dB of seed noise
    assert "| baseline: bicubic |" in text and "33.13" in text
    for plot in ("psnr_vs_params.png", "effects.png", "training_curves.png"):
        assert (tmp_path / "out" / plot).is_file()
    metrics = store.get_run(parent).data.metrics  # the answer on the study's run
    assert metrics["baseline_psnr"] == pytest.approx(BICUBIC)
    assert metrics["best_val_psnr"] > BICUBIC and metrics["trials_at_or_below_baseline"] == 0
    assert 0 < metrics["seed_noise_sd_db"] < 0.2
    assert "scaling_alpha" not in metrics  # two contexts (dot, cosine): two laws, in the report only
    assert any(a.path == "report" for a in store._client.list_artifacts(parent))


def test_one_law_puts_its_exponent_and_held_out_error_on_the_study_run(tmp_path):
    largest_first = dict(reversed(SIZES.items()))
    store, parent = _study(tmp_path, lambda n, att: _true_psnr(n), sizes=largest_first)
    text = write_report(tmp_path / "out", spec=_spec(), tracking_uri=store.uri, parent_run_id=parent).read_text()
    assert "model.params 0.4M vs 0.05M: +" in text  # sizes are judged against the smallest, whatever ran first
    metrics = store.get_run(parent).data.metrics
    assert 0 < metrics["scaling_alpha"] < 3 and math.isfinite(metrics["heldout_error_db"])
    assert abs(metrics["heldout_error_db"]) < 0.5 and "heldout_predicted_psnr" in metrics
    # the true law gains 0.49, 0.41 and 0.34 dB at the three doublings
    assert 0.2 < metrics["psnr_per_doubling_db"] < 0.5


def test_trials_below_the_baseline_and_a_flat_size_curve_are_said_plainly(tmp_path):
    flat = {50_730: 31.0, 101_900: 33.5, 203_900: 33.4, 407_800: 33.45}  # no rise past 0.1M; 0.05M under bicubic
    store, parent = _study(tmp_path, lambda n, att: flat[n], seeds=(0,), isolated=("0.2M",))
    text = write_report(tmp_path / "out", spec=_spec(), tracking_uri=store.uri, parent_run_id=parent).read_text()
    answer = text.split("## Results")[0]
    assert "1 trial(s) (†) have no path across patch borders" in answer
    marked = [line for line in text.splitlines() if line.startswith("| params=") and "†" in line]
    assert len(marked) == 1 and "params=0.2M" in marked[0], marked
    assert "**1 of 4 finished trials score at or below bicubic**" in answer
    assert "**PSNR does not rise with size beyond the trials' scatter at this scale**" in answer
    assert "No replicate seeds" in answer  # one seed: no difference is called real
    assert "✗ at or below baseline" in text
    assert store.get_run(parent).data.metrics["trials_at_or_below_baseline"] == 1
