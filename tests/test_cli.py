"""The `hiir` CLI: every noun has help, user mistakes end in one line and a non-zero exit."""
from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from hiir.models import build
from hiir.platform.cli import COMMANDS, cli, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("noun", ["models", "data", "train", "eval", "restore", "study", "schema", "ui"])
def test_every_subcommand_has_help(noun):
    out = CliRunner().invoke(cli, [noun, "--help"])
    assert out.exit_code == 0, out.output
    assert "Usage:" in out.output and len(out.output.splitlines()) > 3


def test_the_root_help_lists_every_command_without_importing_torch_ray_or_mlflow():
    code = ("import sys; from click.testing import CliRunner; from hiir.platform.cli import cli; "
            "out = CliRunner().invoke(cli, ['--help']); print(out.output); "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    for name, (path, short) in COMMANDS.items():
        module, attribute = path.split(":")
        command = getattr(importlib.import_module(module), attribute)
        assert command.get_short_help_str(limit=45) == short, name
        assert f"{name} " in out.stdout and short in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _hiir(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hiir.platform.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def test_missing_config_file_is_one_line(tmp_path):
    """The whole way, as a user meets it: `python -m hiir.platform.cli` in a process of its own."""
    out = _hiir("train", str(tmp_path / "nope.yaml"), "--workdir", str(tmp_path))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"error: config file {tmp_path / 'nope.yaml'} does not exist"]


@pytest.fixture
def hiir_main(capsys, monkeypatch):
    """`hiir ARGS`, a command that fails, through the entry point (`main`: the error as one line, an exit code) in this
    process: (exit code, stderr). A process of its own per case would spend ~5 s importing torch, Ray and
    MLflow again; the test above runs that path once."""
    def run(*args: str) -> tuple[int, str]:
        monkeypatch.chdir(ROOT)
        monkeypatch.setattr(sys, "argv", ["hiir", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main()
        return exited.value.code, capsys.readouterr().err
    return run


def test_bad_config_field_is_one_line_naming_the_field(tmp_path, hiir_main):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {preset: tiny_x2}\noptim: {lr: 1e-3, warmpu_steps: 5}\n")
    code, err = hiir_main("train", str(cfg), "--workdir", str(tmp_path))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "optim.warmpu_steps" in lines[0] and "optim.warmup_steps" in lines[0], lines


def test_unknown_study_is_one_line(tmp_path, hiir_main):
    code, err = hiir_main("study", "run", "smok", "--workdir", str(tmp_path))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "smoke" in lines[0], lines


@pytest.mark.parametrize("verb", ["eval", "restore"])
@pytest.mark.parametrize("device, says", [("cuda", "sees no CUDA GPU"), ("gpu0", "is not a torch device")])
def test_unusable_device_is_one_line_before_any_loading(tmp_path, verb, device, says, hiir_main, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # on a GPU machine too: the CPU is forced
    if torch.cuda.is_available():  # CUDA read the variable when this process first asked, before this test
        pytest.skip("this process started CUDA before the test could hide its GPUs")
    code, err = hiir_main(verb, str(tmp_path), str(tmp_path), "--device", device)  # no weights there: never read
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"--device {device}" in lines[0].replace("'", "") and says in lines[0], lines


@pytest.mark.parametrize("verb", ["eval", "restore"])
def test_misaligned_tiles_are_refused_naming_the_options_before_any_image(tmp_path, verb, hiir_main):
    model = build("tiny_x2")  # pad multiple 8
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps(dataclasses.asdict(model.config)))
    out = tmp_path / "restored"
    where = ["--out", str(out)] if verb == "restore" else []
    code, err = hiir_main(verb, str(tmp_path), str(tmp_path), "--tile", "20", "--overlap", "4", *where)
    assert code == 2  # click's usage error
    assert "'--tile' / '--overlap'" in err and "tile=20 and overlap=4" in err and "pad multiple 8" in err, err
    assert not out.exists()


def test_misaligned_validation_tiles_are_refused_before_any_worker(tmp_path, hiir_main):
    code, err = hiir_main("train", "studies/train/tiny_sr_x2.yaml", "--set", "eval.tile=20", "--workdir", str(tmp_path))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "eval.tile / eval.tile_overlap" in lines[0] and "tile=20" in lines[0], lines
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()  # nothing started


@pytest.mark.parametrize("kind", ["train", "study"])
def test_schema_verb_prints_the_committed_schema(kind):
    """studies/schema/*.schema.json are what `hiir schema` prints, so they never drift from the code;
    regenerate them with `hiir schema train > studies/schema/train.schema.json` (and study)."""
    out = CliRunner().invoke(cli, ["schema", kind])
    assert out.exit_code == 0, out.output
    assert out.output == (ROOT / "studies" / "schema" / f"{kind}.schema.json").read_text()


def test_a_patch_smaller_than_the_models_groups_is_refused_before_any_worker(tmp_path, hiir_main):
    """tree_depth 4 groups 2P = 16 px in tiny_x2: an 8-px patch would be padded to 4x its area."""
    code, err = hiir_main("train", "studies/train/tiny_sr_x2.yaml", "--set", "model.tree_depth=4", "--set",
                          "data.lq_patch=8", "--workdir", str(tmp_path))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "data.lq_patch=8" in lines[0] and "pad multiple 16" in lines[0], lines
    assert "model.patch/model.patch2" in lines[0] and "data.lq_patch >= 16" in lines[0]
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()  # nothing started
