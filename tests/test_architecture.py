"""The architecture holds: import-linter's contracts (pyproject.toml) are kept, they break on a new
import circle or an upward import, and no source file outgrows one sitting (400 lines).

The contracts are checked by the real ``lint-imports`` in a subprocess. The breaking cases run it
on a copy of madkit/ and plugins/ in a temporary folder with one import added, placed first on
PYTHONPATH so the copy, not the installed tree, is analysed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").is_file())
MAX_LINES = 400


def lint_imports(cwd: Path, pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    """madkit/, every plugin package and pyproject.toml, copied (caches left out)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "madkit", tmp_path / "madkit", ignore=ignore)
    for plugin in PLUGINS:
        shutil.copytree(plugin, tmp_path / "plugins" / plugin.name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(module: Path, line: str) -> None:
    text = module.read_text()
    module.write_text(text + f"\n{line}  # added by tests/test_architecture.py\n")


def broken(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.rstrip().endswith("BROKEN")]


def test_a_circle_between_two_modules_of_one_room_breaks_the_contract(tree_copy):
    # layout.py is imported by verify.py; the reverse import closes a circle inside checkpoints/,
    # which no layer rule sees: only the acyclic contract does
    add_import(tree_copy / "madkit/engine/checkpoints/layout.py", "from madkit.engine.checkpoints import verify")
    result = lint_imports(tree_copy, [tree_copy, tree_copy / "plugins"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert [line.split(" BROKEN")[0] for line in broken(result)] == [
        "no import circles: no cycle between the modules or subpackages of any package"
    ]


def test_a_circle_inside_a_plugin_breaks_the_contract(tree_copy):
    add_import(tree_copy / "plugins/madkit_models/residual.py", "from madkit_models import passes")
    result = lint_imports(tree_copy, [tree_copy, tree_copy / "plugins"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert any("no import circles" in line for line in broken(result))


def test_an_upward_import_and_a_plugin_import_break_their_contracts(tree_copy):
    add_import(tree_copy / "madkit/engine/checkpoints/run_lock.py", "from madkit.engine.training import ema")
    add_import(tree_copy / "madkit/registry.py", "import madkit_partitioners")
    result = lint_imports(tree_copy, [tree_copy, tree_copy / "plugins"])
    assert result.returncode == 1
    names = " | ".join(broken(result))
    assert "the engine's rooms import downwards only" in names
    assert "the core never imports a plugin" in names


def test_no_source_file_is_longer_than_one_sitting():
    files = [*(ROOT / "madkit").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
    assert len(files) > 100
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by job (at most {MAX_LINES} lines each): {long}"
