"""Evaluation rules that live in one place: the SR convention (border and headline), and `hiir restore`
reading images as training data does."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hiir.platform.errors import HiirError
from hiir.platform.evaluation.metrics import sr_convention


@pytest.mark.parametrize("scale, channels, expected", [
    (2, 3, (2, "psnr_y")), (4, 3, (4, "psnr_y")), (3, 1, (3, "psnr")), (1, 3, (0, "psnr")), (1, 1, (0, "psnr")),
])
def test_sr_convention(scale, channels, expected):
    assert sr_convention(scale, channels) == expected


def test_report_headlines_paired_sr_on_y_as_evaluation_does():
    """A paired SR set (scale 2, LQ given) is SR: Y is its headline in the report, as in evaluation."""
    from hiir.platform.results.analysis import analyse
    from hiir.platform.results.markdown import results_table
    from hiir.platform.results.trials import Trial

    params = {"model.num_params": "1000", "resolved_model.scale": "2", "resolved_model.in_channels": "3",
              "data.val": "['/data/RealSR_x2']"}
    metrics = {"val/RealSR_x2/psnr": 28.0, "val/RealSR_x2/psnr_y": 29.5, "val_psnr": 29.5}
    trial = Trial("r", "t", "FINISHED", {}, params, metrics, ([], []))
    (row,) = results_table(SimpleNamespace(expected=None), analyse([trial], parent_metrics={}, parent_tags={}))
    assert row["RealSR_x2"] == "29.50"


def _tiny(scale: int = 2):
    from hiir.models import build

    torch.manual_seed(0)
    return build("tiny_x2", scale=scale).eval()


def test_restore_reads_16_bit_images_as_training_does(tmp_path):
    from PIL import Image

    from hiir.data_prep import load_image
    from hiir.platform.evaluation.restore import restore_files

    values = (np.arange(20 * 24, dtype=np.uint32).reshape(20, 24) * 137 % 65536).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")  # mode I;16
    from hiir.platform.evaluation.evaluate import restore_array
    from hiir.platform.evaluation.metrics import to_uint8

    model = _tiny()
    out = restore_files(model, tmp_path / "grey16.png", tmp_path / "out")
    # the 16-bit image was scaled to 8 bits (round(v / 257)) as in a dataset build, not clipped at 255
    lq = load_image(tmp_path / "grey16.png")
    assert lq.max() > 200 and np.unique(lq).size > 50
    np.testing.assert_array_equal(np.asarray(Image.open(out)), to_uint8(restore_array(model, lq)))
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]


def test_restore_refuses_a_corrupt_image_naming_it(tmp_path):
    from hiir.platform.evaluation.restore import restore_files

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(HiirError, match="bad.png"):
        restore_files(_tiny(), bad, tmp_path / "out")
    assert not (tmp_path / "out" / "bad.png").exists()


def test_baseline_is_bicubic_for_sr_and_the_input_for_restoration_scored_like_a_model(workdir):
    """The report's baseline row is MATLAB bicubic upsampling of the same LQ images (SR), or the degraded
    input itself (restoration), through the same metric code as every trial."""
    from hiir.data_prep import imresize, iter_val
    from hiir.platform.evaluation.evaluate import baseline_scores
    from hiir.platform.evaluation.metrics import psnr, to_uint8

    sr = str(workdir / "data" / "demo_sr_x2")
    scores = baseline_scores([sr])
    by_hand = [psnr(to_uint8(imresize(lq, 2) / 255.0), gt, 2, y_channel=True) for _, lq, gt in iter_val(sr)]
    assert scores.metrics["val/demo_sr_x2/psnr_y"] == pytest.approx(np.mean(by_hand), abs=1e-9)
    assert scores.metrics["val_psnr"] == scores.metrics["val/demo_sr_x2/psnr_y"]
    assert 32.5 < scores.metrics["val_psnr"] < 34.0  # 33.13 dB measured: the bar the demo's models must clear
    assert sorted(scores.per_image["demo_sr_x2"]) == sorted(name for name, _, _ in iter_val(sr))

    noisy = str(workdir / "data" / "demo_denoise_s25")
    identity = baseline_scores([noisy])
    by_hand = [psnr(lq, gt, 0) for _, lq, gt in iter_val(noisy)]
    assert identity.metrics["val/demo_denoise_s25/psnr"] == pytest.approx(np.mean(by_hand), abs=1e-9)
