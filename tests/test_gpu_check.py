"""bench/gpu_check.sh: it fails cleanly without a GPU, and its CPU dry run runs every code path,
importing hiir through its own shim, as on a GPU machine where hiir is not installed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path):
    no_gpu = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # on a GPU machine too: the CPU is forced
    res = _run(env={**no_gpu, "PYTHON": sys.executable, "OUT": str(tmp_path)}, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().startswith("no CUDA GPU available: torch "), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_cpu_dry_run_needs_no_installed_hiir(tmp_path):
    # `python -S` skips the .pth files, so the editable install's finder is gone and `hiir` can only
    # come from the script's shim; the venv's site-packages stay reachable through PYTHONPATH.
    wrapper = tmp_path / "python-without-hiir"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(wrapper), "OUT": str(out), "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    assert subprocess.run([str(wrapper), "-c", "import hiir.platform"], env=env).returncode != 0

    res = _run("--cpu-dry-run", env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["cpu_dry_run"] and result["zero"].startswith("deepspeed ")
    (row,) = result["rows"]
    assert "error" not in row, row
    assert row["engine_step_s"] > 0 and row["bare_step_s"] > 0 and row["tflop_per_step"] > 0
    assert 0 < row["ema_over_step"] < 1
    assert row["eval_whole_s"] > 0 and row["eval_tiled_s"] > 0  # validation's path on the device
    assert [z["zero_stage"] for z in result["zero_rows"]] == [0, 2, 3]
    assert all("error" not in z and z["step_s"] > 0 for z in result["zero_rows"]), result["zero_rows"]
    assert "| tiny_x2 |" in (out / "gpu_check.md").read_text()
