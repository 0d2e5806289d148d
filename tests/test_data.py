"""data_prep without Ray: imresize, degradations, loading, manifest checks, readers.

Datasets here are built by the real build_dataset with Ray Data swapped for an in-process map
(`local_build`); tests/test_data_ray.py runs the real Ray Data and Ray Train paths.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hiir.data_prep as dp
from hiir.data_prep import DatasetError, imresize
from hiir.data_prep import build as build_mod
from hiir.data_prep.imresize import resize_weights


# ---------------------------------------------------------------- imresize
def test_imresize_matches_hand_computed_matlab_values():
    # MATLAB: imresize([0 1], 2, 'bicubic') along the width. Output centres u = 0.75, 1.25, 1.75, 2.25;
    # Keys a=-0.5 taps at u=0.75 are (-0.0234375, 0.2265625, 0.8671875, -0.0703125) on pixels (2,1,1,2)
    # after symmetric padding -> -0.09375, and by symmetry the rest.
    out = imresize(np.array([[0.0, 1.0]]), 2)
    np.testing.assert_allclose(out[0], [-0.09375, 0.203125, 0.796875, 1.09375], atol=1e-12)
    assert out.shape == (2, 4)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3])
def test_imresize_preserves_constants(scale):
    img = np.full((24, 30, 3), 137.0)
    np.testing.assert_allclose(imresize(img, scale), 137.0, atol=1e-9)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_imresize_downscale_of_ramp_is_ramp_at_kernel_centres_in_interior(s):
    n = 24 * s
    ramp = np.tile(np.arange(n, dtype=np.float64), (4, 1))  # value j at 0-based column j
    out = imresize(ramp, 1 / s)[0]
    x = np.arange(1, n // s + 1)
    centre = x * s + 0.5 * (1 - s) - 1  # MATLAB's u = x/scale + 0.5(1-1/scale), made 0-based
    interior = slice(3, -3)  # the widened kernel (4*s px) stays inside the image
    np.testing.assert_allclose(out[interior], centre[interior], atol=1e-9)
    assert not np.isclose(out[0], centre[0])  # the border differs: symmetric padding, not extrapolation


@pytest.mark.parametrize("s", [2, 4])
def test_imresize_border_is_symmetric_padding_repeating_the_edge(s):
    rng = np.random.default_rng(0)
    img = rng.random((8 * s, 8 * s))
    n = img.shape[1]
    ours = imresize(img, 1 / s)
    for mode, same in (("symmetric", True), ("reflect", False)):  # symmetric repeats the edge pixel, reflect does not
        full = imresize(np.pad(img, ((0, 0), (n, n)), mode=mode), 1 / s)
        assert np.allclose(ours, full[:, n // s : 2 * n // s], atol=1e-9) == same, mode


def test_imresize_shapes_follow_matlab_ceil_and_accept_uint8():
    assert imresize(np.zeros((5, 7)), 0.5).shape == (3, 4)
    assert imresize(np.zeros((10, 11, 3), np.uint8), 1 / 3).shape == (4, 4, 3)
    assert imresize(np.zeros((96, 96)), 1 / 3).shape == (32, 32)
    assert imresize(np.zeros((7, 5)), 2).shape == (14, 10)
    assert imresize(np.zeros((4, 4), np.uint8), 0.5).dtype == np.float64
    w, _ = resize_weights(12, 6, 0.5)
    assert w.shape[1] == 8  # kernel width 4/scale = 8 taps after dropping zero columns
    np.testing.assert_allclose(w.sum(1), 1.0)


# ---------------------------------------------------------------- degradations
def test_degradations_are_seeded_and_shaped():
    img = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    a = dp.add_gaussian_noise(img / 255.0, 25, np.random.default_rng(3))
    b = dp.add_gaussian_noise(img / 255.0, 25, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert abs(np.std(a - img / 255.0) - 25 / 255) < 0.01
    lo, hi = dp.jpeg(img, 10), dp.jpeg(img, 95)
    assert lo.shape == img.shape and lo.dtype == np.uint8
    assert np.abs(lo.astype(int) - img).mean() > np.abs(hi.astype(int) - img).mean()
    flat = np.full((16, 16, 3), 50.0)
    np.testing.assert_allclose(dp.gaussian_blur(flat, 1.5), 50.0)
    np.testing.assert_allclose(dp.motion_blur(flat, 7, 30), 50.0)
    assert np.array_equal(dp.degrade_image(img, "denoise", sigma=25, seed=0, name="x"),
                          dp.degrade_image(img, "denoise", sigma=25, seed=0, name="x"))


# ---------------------------------------------------------------- loading
@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "P", "I;16", "RGB"])
def test_load_image_converts_every_mode_to_rgb8(tmp_path, mode):
    base = Image.fromarray((np.arange(12 * 10 * 3) % 251).astype(np.uint8).reshape(12, 10, 3))
    if mode == "I;16":
        im = Image.fromarray(np.arange(120, dtype=np.uint16).reshape(12, 10) * 500)
    else:
        im = base.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    out = dp.load_image(path)
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    if mode == "I;16":
        assert out[-1, -1, 0] == round(119 * 500 / 257)


def test_load_image_refuses_corrupt_and_oversized(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match="bad.png"):
        dp.load_image(bad)
    big = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(big)
    with pytest.raises(DatasetError, match="decompression bomb"):
        dp.load_image(big, max_pixels=1000)


# ---------------------------------------------------------------- builds (Ray Data swapped for a local map)
def photos(folder: Path, n: int = 4, size=(72, 60), seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(n):
        smooth = (np.sin(xx / (5 + i)) * 60 + yy + 60)[..., None] + np.array([0, 30, 60])
        img = np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def local_build(monkeypatch):
    monkeypatch.setattr(build_mod, "run_on_ray",
                        lambda items, p, progress: [build_mod.process_chunk(i, p) for i in items])
    return dp.build_dataset


def test_round_trip_gives_the_directly_degraded_pixels(tmp_path, local_build):
    src = photos(tmp_path / "src", n=3, size=(71, 62))
    m = local_build(src, tmp_path / "ds", "sr", scale=2, split="both", val_names=["img2"], sub_size=32, step=16,
                    images_per_shard=1)
    assert m.scale == 2 and m.rows("val") == 1 and m.rows("train") == 2 * 3 * 4 and not m.skipped
    gt0 = dp.mod_crop(dp.load_image(src / "img0.png"), 2)
    lq0 = np.clip(np.round(imresize(gt0, 0.5)), 0, 255).astype(np.uint8)
    reader = dp.TrainReader(tmp_path / "ds", rank=0, world_size=2, batch_size=2, lq_patch=8, seed=0)
    assert reader.shards == ["train-00000.parquet"]
    names = reader.row_names
    # the last sub-image of img0 sits flush with the bottom-right border (70x62 -> y=38, x=30)
    lq, gt = reader.rows.get(names.index("img0_s011"))
    np.testing.assert_array_equal(gt, gt0[38:70, 30:62])
    np.testing.assert_array_equal(lq, lq0[19:35, 15:31])
    (name, vlq, vgt), = list(dp.iter_val(tmp_path / "ds"))
    gt2 = dp.mod_crop(dp.load_image(src / "img2.png"), 2)
    assert name == "img2" and vgt.shape == (70, 62, 3)
    np.testing.assert_array_equal(vgt, gt2)
    np.testing.assert_array_equal(vlq, dp.degrade_image(gt2, "sr", scale=2))


@pytest.mark.parametrize("task,kw", [("denoise", {"sigma": 25}), ("jpeg", {"quality": 20})])
def test_round_trip_denoise_and_jpeg_val(tmp_path, local_build, task, kw):
    src = photos(tmp_path / "src", n=1)
    local_build(src, tmp_path / "ds", task, split="val", seed=5, **kw)
    (name, lq, gt), = list(dp.iter_val(tmp_path / "ds"))
    np.testing.assert_array_equal(lq, dp.degrade_image(gt, task, seed=5, name=name, **kw))


def _find(patch, big, s=1):
    """Top-left (y, x) of `patch` in `big` at multiples of nothing, or None."""
    ph, pw = patch.shape[:2]
    for y in range(big.shape[0] - ph + 1):
        for x in range(big.shape[1] - pw + 1):
            if np.array_equal(big[y : y + ph, x : x + pw], patch):
                return y, x
    return None


def test_batches_are_pure_functions_of_step_and_crops_match(tmp_path, local_build):
    local_build(photos(tmp_path / "src", n=2, size=(32, 32)), tmp_path / "ds", "sr", scale=2, sub_size=16, step=16)
    r = dp.TrainReader(tmp_path / "ds", rank=0, world_size=1, batch_size=6, lq_patch=4, seed=7)
    lq, gt = r.get_batch(3)
    assert lq.shape == (6, 4, 4, 3) and gt.shape == (6, 8, 8, 3) and lq.dtype == gt.dtype == np.uint8
    lq2, gt2 = dp.TrainReader(tmp_path / "ds", rank=0, world_size=1, batch_size=6, lq_patch=4, seed=7).get_batch(3)
    np.testing.assert_array_equal(lq, lq2)
    assert not np.array_equal(lq, r.get_batch(4)[0])
    dihedral = [lambda a, k=k, f=f: np.rot90(a[:, ::-1] if f else a, k) for k in range(4) for f in (0, 1)]
    for b in range(6):  # each (lq, gt) pair is one crop at matching positions under one flip/rotation
        hits = [(i, t) for i in range(len(r)) for t in dihedral
                if (pos := _find(t(lq[b]), r.rows.get(i)[0])) is not None
                and np.array_equal(r.rows.get(i)[1][2 * pos[0] : 2 * pos[0] + 8, 2 * pos[1] : 2 * pos[1] + 8],
                                   t(gt[b]))]
        assert hits, f"patch {b} matches no row crop"


def test_ranks_read_disjoint_parts(tmp_path, local_build):
    local_build(photos(tmp_path / "src", n=3, size=(32, 32)), tmp_path / "ds", "sr", scale=2, sub_size=16, step=8,
                images_per_shard=1)
    one_shard = tmp_path / "one"
    local_build(photos(tmp_path / "src"), one_shard, "sr", scale=2, sub_size=16, step=8, images_per_shard=8)
    for ds, ws in ((tmp_path / "ds", 2), (tmp_path / "ds", 3), (one_shard, 2), (one_shard, 3)):
        parts = [set(dp.TrainReader(ds, rank=k, world_size=ws, batch_size=1, lq_patch=4, seed=0).row_names)
                 for k in range(ws)]
        total = dp.load_manifest(ds).rows("train")
        assert sum(map(len, parts)) == total == len(set().union(*parts)), (ds, ws)


def test_manifest_detects_flipped_byte_missing_and_truncated_shards(tmp_path, local_build):
    m = local_build(photos(tmp_path / "src", n=2), tmp_path / "ds", "sr", scale=2, sub_size=32, step=32,
                    images_per_shard=1)
    shard = tmp_path / "ds" / m.shards[0].name
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="sha256"):
        dp.load_manifest(tmp_path / "ds")
    with pytest.raises(DatasetError, match="sha256"):
        dp.TrainReader(tmp_path / "ds", rank=0, world_size=1, batch_size=1, lq_patch=4, seed=0)
    dp.load_manifest(tmp_path / "ds", verify=False)  # names and existence still fine
    shard.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(DatasetError, match=m.shards[0].name):
        dp.load_manifest(tmp_path / "ds")
    shard.unlink()
    with pytest.raises(DatasetError, match="missing"):
        dp.load_manifest(tmp_path / "ds", verify=False)


def test_truncated_shard_with_matching_checksum_is_still_reported(tmp_path, local_build):
    local_build(photos(tmp_path / "src", n=1), tmp_path / "ds", "sr", scale=2, split="val")
    mpath = tmp_path / "ds" / "manifest.json"
    man = json.loads(mpath.read_text())
    shard = tmp_path / "ds" / man["shards"][0]["name"]
    shard.write_bytes(shard.read_bytes()[:200])
    import hashlib
    man["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    mpath.write_text(json.dumps(man))
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        list(dp.iter_val(tmp_path / "ds"))


def test_manifest_rejects_bad_version_and_escaping_shard_names(tmp_path, local_build):
    local_build(photos(tmp_path / "src", n=1), tmp_path / "ds", "sr", scale=2, split="val")
    mpath = tmp_path / "ds" / "manifest.json"
    good = json.loads(mpath.read_text())
    for field, value, match in [("schema_version", 99, "schema_version 99"),
                                ("shards", [dict(good["shards"][0], name="../val-00000.parquet")], "not a plain"),
                                ("shards", [dict(good["shards"][0], name="/etc/passwd")], "not a plain")]:
        mpath.write_text(json.dumps(dict(good, **{field: value})))
        with pytest.raises(DatasetError, match=match):
            dp.load_manifest(tmp_path / "ds")
    mpath.write_text(json.dumps(good))
    outside = tmp_path / "outside.parquet"
    shard = tmp_path / "ds" / good["shards"][0]["name"]
    shard.rename(outside)
    os.symlink(outside, shard)
    with pytest.raises(DatasetError, match="outside the dataset"):
        dp.load_manifest(tmp_path / "ds")


def test_corrupt_image_is_skipped_and_listed_or_fails_under_strict(tmp_path, local_build, caplog):
    src = photos(tmp_path / "src", n=2)
    (src / "broken.png").write_bytes(b"not an image")
    Image.new("RGB", (20, 20)).save(src / "tiny.png")
    with caplog.at_level("WARNING", logger="hiir.data"):
        m = local_build(src, tmp_path / "ds", "sr", scale=2, sub_size=32, step=32)
    # one plain line per skipped file (no Python warning, no echoed source line), then a summary line
    lines = [r.getMessage() for r in caplog.records if r.name == "hiir.data"]
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert any(line.startswith("skipped: ") and "tiny.png" in line for line in lines)
    assert any(line.startswith("skipped: ") and "broken.png" in line for line in lines)
    assert lines[-1].startswith("2 of 4 images skipped")
    reasons = {Path(s.path).name: s.reason for s in m.skipped}
    assert set(reasons) == {"broken.png", "tiny.png"} and "corrupt" in reasons["broken.png"]
    assert "smaller than the 32 px" in reasons["tiny.png"]
    with pytest.raises(DatasetError, match="broken.png"):
        local_build(src, tmp_path / "strict", "sr", scale=2, sub_size=32, step=32, strict=True)
    assert not any((tmp_path / "strict").iterdir())  # the failed build left nothing that looks like a shard


def test_paired_sizes_must_agree_and_name_both_files(tmp_path, local_build):
    gt = photos(tmp_path / "gt", n=2, size=(40, 40))
    lq = photos(tmp_path / "lq", n=2, size=(20, 20), seed=1)
    m = local_build(gt, tmp_path / "ok", "paired", lq_source=lq, scale=2, split="val")
    assert m.task == "paired" and m.rows("val") == 2
    Image.new("RGB", (21, 20)).save(lq / "img1.png")
    with pytest.raises(DatasetError, match=r"GT .*img1.png.* LQ .*lq/img1.png"):
        local_build(gt, tmp_path / "bad", "paired", lq_source=lq, scale=2, split="val")


def test_existing_dir_and_leftovers_are_refused_unless_overwrite(tmp_path, local_build):
    src = photos(tmp_path / "src", n=1)
    local_build(src, tmp_path / "ds", "sr", scale=2, split="val")
    with pytest.raises(DatasetError, match="already holds a dataset"):
        local_build(src, tmp_path / "ds", "sr", scale=2, split="val")
    (tmp_path / "ds" / "manifest.json").unlink()  # what a build killed before its last write leaves
    with pytest.raises(DatasetError, match="interrupted build"):
        dp.load_manifest(tmp_path / "ds")
    with pytest.raises(DatasetError, match="interrupted build"):
        local_build(src, tmp_path / "ds", "sr", scale=3, split="val")
    m = local_build(src, tmp_path / "ds", "sr", scale=3, split="val", overwrite=True)
    assert dp.load_manifest(tmp_path / "ds").scale == 3 == m.scale


def test_bad_task_parameters_are_dataset_errors(tmp_path):
    src = photos(tmp_path / "src", n=1)
    for kw, match in [(dict(task="sr", scale=5), "scale 2, 3 or 4"), (dict(task="denoise"), "sigma"),
                      (dict(task="jpeg", quality=0), "quality"), (dict(task="paired"), "--lq"),
                      (dict(task="blur"), "task must be")]:
        with pytest.raises(DatasetError, match=match):
            dp.build_dataset(src, tmp_path / "ds", **kw)
    with pytest.raises(DatasetError, match="not a dataset"):
        dp.load_manifest(tmp_path / "nothing")


def test_cli_data_verify_and_errors(tmp_path, local_build):
    from click.testing import CliRunner

    from hiir.platform.cli.data import data

    local_build(photos(tmp_path / "src", n=1), tmp_path / "ds", "sr", scale=2, split="val")
    res = CliRunner().invoke(data, ["verify", str(tmp_path / "ds")])
    assert res.exit_code == 0 and "ok (sr x2" in res.output
    res = CliRunner().invoke(data, ["build", str(tmp_path / "src")])
    assert res.exit_code == 2 and "--task" in res.output
