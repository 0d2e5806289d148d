"""The package layout never shadows the standard library's `platform` (nor any other module).

A `platform/` folder with an `__init__.py` on sys.path replaces Python's own `platform`, which torch,
ray and mlflow import; Ray workers then crash at `import ray` and the task hangs without an error.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("platform", "studies", "models", "data_prep")


def test_platform_has_no_init():
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert not (ROOT / "studies" / "__init__.py").exists()


def test_no_top_level_package_shadows_an_installed_or_stdlib_module():
    """models/ and data_prep/ are regular packages (they export the public API), so their names
    must be unique: nothing in the stdlib or site-packages may be importable by the same name."""
    probe = (f"import importlib.util, json, sys; names = {TOP_LEVEL!r}; "
             "print(json.dumps({n: (n in sys.stdlib_module_names) or "
             "importlib.util.find_spec(n) is not None for n in names}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, check=True)
    import json

    taken = {k for k, v in json.loads(out.stdout).items() if v}
    # `platform` is the stdlib module (the folder has no __init__.py, so it cannot shadow it)
    assert taken <= {"platform"}, f"top-level folders shadow existing modules: {taken - {'platform'}}"


def test_stdlib_platform_wins_from_the_repo_root():
    code = "import platform, hiir.platform.cli, torch, ray; assert platform.system(); print(platform.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "site-packages" not in out.stdout and str(ROOT / "platform") not in out.stdout


def test_pytest_collects_from_the_repo_root():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/test_layout.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ray_worker_with_repo_as_working_dir_imports_stdlib_platform():
    """Ray uploads the repo as the worker's cwd; the worker must still find the stdlib `platform`."""
    code = f"""
import ray
ray.init(num_cpus=1, include_dashboard=False, runtime_env={{"working_dir": {str(ROOT)!r},
         "excludes": [".venv", ".cache", "hiir-work", ".git"]}})
@ray.remote
def probe():
    import platform, hiir.platform.cli, torch
    return platform.system()
print("WORKER", ray.get(probe.remote(), timeout=150))
ray.shutdown()
"""
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=220,
                         env={**__import__("os").environ, "RAY_AUTH_MODE": "disabled"})
    assert "WORKER Linux" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


@pytest.mark.timeout(300)
def test_wheel_carries_every_package_and_study_under_hiir(tmp_path):
    """A non-editable install (`pip install .`) must bring the studies along, and nothing outside
    `hiir/`: a top-level `platform` in the wheel would shadow the standard library's."""
    import shutil
    import zipfile

    # setuptools builds in the source tree (build/, *.egg-info): build from a copy, never in the repo
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "hiir-work", "build", "*.egg-info", "__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("hiir-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    code = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert all(n.startswith("hiir/") for n in code), sorted(n for n in code if not n.startswith("hiir/"))
    studies = {f"hiir/studies/{p.relative_to(ROOT / 'studies')}" for p in (ROOT / "studies").rglob("*.yaml")}
    assert studies and studies <= names, sorted(studies - names)
    for folder in ("platform", "models", "data_prep"):
        sources = {f"hiir/{folder}/{p.relative_to(ROOT / folder)}" for p in (ROOT / folder).rglob("*.py")}
        assert sources <= names, sorted(sources - names)
