"""The shape of the code: imports flow one way, and the command line stays light.

The layers are written down once, as import-linter contracts in ``pyproject.toml``
(``[tool.importlinter]``); these tests run them with the suite, so an import that runs back
up the layers, or a cycle between two modules of a package, fails here with the chain of
imports that breaks it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cnnlab"
LAZY = "# lazy:"  # the marker of an in-function import that keeps `import cnnlab` light, with its reason

# What `cnnlab --help` must not pay for: torch alone takes seconds to import.
HEAVY = ("torch", "numpy", "optuna", "timm", "matplotlib", "torchvision", "onnx", "onnxruntime", "safetensors",
         "sklearn", "tensorboard", "PIL")  # fmt: skip


def test_import_contracts_hold() -> None:
    pytest.importorskip("importlinter", reason="pip install 'cnnlab[test]' installs import-linter")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
         "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("code", ["import cnnlab.cli.main", "import cnnlab.cli.main as m; m.build_parser()"])
def test_command_line_imports_no_heavy_library(code: str) -> None:
    """Importing the CLI and building its parser (all ``cnnlab --help`` does) loads none of the
    heavy libraries; the commands import them when they run. A fresh interpreter, because
    this one has imported torch long ago."""
    probe = f"{code}; import sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [], f"`{code}` imported {proc.stdout.strip()}"


def _in_function_cnnlab_imports(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every import of a cnnlab module inside a function of ``path``."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for func in ast.walk(ast.parse(source, str(path))):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import):
                ours = any(alias.name.split(".")[0] == "cnnlab" for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                ours = node.level > 0 or (node.module or "").split(".")[0] == "cnnlab"
            else:
                continue
            text = lines[node.lineno - 1 : (node.end_lineno or node.lineno)]
            if ours and not any(LAZY in line for line in text):
                found.append((node.lineno, text[0].strip()))
    return sorted(set(found))


def test_cnnlab_modules_are_imported_at_the_top() -> None:
    """Outside ``cli/`` a cnnlab module is imported at the top of the module, where the
    dependency (and any cycle) is visible to readers and to import-linter. An import inside
    a function needs a reason on its line (``# lazy: ...``)."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "cli" not in path.relative_to(PACKAGE).parts[:1]
        for line, text in _in_function_cnnlab_imports(path)
    ]
    assert not offenders, f"{len(offenders)} in-function cnnlab import(s) without a '{LAZY}' reason:\n" + "\n".join(offenders)
