"""The README's claims point at tests that exist: every `test_x.py::test_name` it cites is defined there."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_test_the_readme_cites_exists():
    cited: list[tuple[str, str]] = []
    for line in (ROOT / "README.md").read_text().splitlines():
        file = None  # a bare `::name` continues the file last named on its line
        for ref_file, name in re.findall(r"`(test_\w+\.py)?::(test_\w+)`", line):
            file = ref_file or file
            assert file, f"README cites `::{name}` with no file before it: {line[:120]}"
            cited.append((file, name))
    assert len(cited) >= 10, cited  # the fault table alone cites more; a changed format must not pass silently
    missing = [f"{file}::{name}" for file, name in cited
               if not (ROOT / "tests" / file).is_file() or name not in _defined_tests(ROOT / "tests" / file)]
    assert not missing, f"README cites tests that do not exist: {missing}"
