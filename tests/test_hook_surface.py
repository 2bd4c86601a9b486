"""The plugin surface: a snapshot of the hooks and the registration call, their documentation, and
the complete third-party example in docs/writing-plugins.md, which is installed and tested for real."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from fake_plugins import TINY_SPEC

from madkit import hookspecs
from madkit.cli import main
from madkit.interfaces import INTERFACES
from madkit.registry import PluginHandle, Registry
from madkit.testing import PartitionerContract

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXAMPLE = DOCS / "examples" / "madkit-snake"

# The plugin surface as third parties see it. Changing it breaks every installed plugin: if a change is
# intended, update this snapshot, docs/writing-plugins.md and the version in the same commit.
HOOKS = {"madkit_register": ("registry",)}
REGISTER_ARGS = ("interface", "kind", "config_cls")
# The interfaces a plugin may register kinds for: adding one widens the surface, renaming or removing
# one breaks plugins. Change it on purpose, with docs/architecture.md and docs/writing-plugins.md.
INTERFACES_SNAPSHOT = (
    "partitioner", "rope", "layer", "embedder", "model", "schedule", "sampler", "data", "codec", "metric", "extractor",
    "sink",
)


def hook_surface() -> dict[str, tuple[str, ...]]:
    """{hook name: argument names} of every hook specification in madkit.hookspecs."""
    marker = f"{hookspecs.PROJECT}_spec"  # the attribute pluggy's HookspecMarker sets
    return {
        name: tuple(inspect.signature(fn).parameters)
        for name, fn in vars(hookspecs).items()
        if callable(fn) and getattr(fn, marker, None) is not None
    }


def test_hook_surface_has_not_changed():
    assert hook_surface() == HOOKS, "the madkit hook surface changed; see the comment above HOOKS"


def test_registration_call_has_not_changed():
    params = tuple(inspect.signature(PluginHandle.register).parameters)[1:]  # without self
    assert params == REGISTER_ARGS, "registry.register(...) changed; see the comment above HOOKS"


def test_interfaces_have_not_changed():
    assert INTERFACES == INTERFACES_SNAPSHOT, "the madkit interfaces changed; see the comment above INTERFACES_SNAPSHOT"


def test_every_contract_suite_is_documented():
    import madkit.testing

    suites = sorted(name for name in dir(madkit.testing) if name.endswith("Contract"))
    text = (DOCS / "writing-plugins.md").read_text()
    assert {"PartitionerContract", "RopeContract", "SamplerContract", "ScheduleContract"} <= set(suites)
    assert [name for name in suites if f"**`{name}`**" not in text] == []


def test_every_hook_is_documented():
    text = (DOCS / "writing-plugins.md").read_text()
    for name, args in hook_surface().items():
        heading = f"### `{name}({', '.join(args)})`"
        assert re.search(rf"^{re.escape(heading)}$", text, flags=re.M), f"docs/writing-plugins.md lacks {heading}"
    assert f"registry.register({', '.join(REGISTER_ARGS)})" in text


def test_every_interface_is_documented():
    # architecture.md: the first column of the components table names every interface
    cells = re.findall(r"^\| ([a-z, ]+) \|", (DOCS / "architecture.md").read_text(), flags=re.M)
    documented = {name.strip() for cell in cells for name in cell.split(",")}
    assert set(INTERFACES) <= documented, f"docs/architecture.md lacks {sorted(set(INTERFACES) - documented)}"
    # writing-plugins.md: the list of interfaces a plugin may register for
    plugins_doc = (DOCS / "writing-plugins.md").read_text()
    assert all(f"`{name}`" in plugins_doc for name in INTERFACES)


# --------------------------------------------------------------------------- the example plugin
def example_blocks() -> dict[str, str]:
    """{path under docs/examples: code block} for every example block in docs/writing-plugins.md."""
    text = (DOCS / "writing-plugins.md").read_text()
    blocks = re.findall(r"^<!-- example: (\S+) -->\n```\w*\n(.*?)^```$", text, flags=re.M | re.S)
    return dict(blocks)


def test_doc_includes_the_example_files_verbatim():
    blocks = example_blocks()
    files = {
        str(p.relative_to(EXAMPLE.parent)): p.read_text()
        for p in EXAMPLE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert set(blocks) == set(files), "every example file appears in the doc, and nothing else"
    for name, text in files.items():
        assert blocks[name] == text, f"docs/writing-plugins.md's copy of {name} differs from the file"


@pytest.fixture
def snake_installed(fakes_installed, plugin_site, monkeypatch) -> dict[str, str]:
    """madkit-snake installed as its pyproject declares it, next to the fake kinds; returns a subprocess env."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"]["madkit.plugins"]
    plugin_site.install(
        project["name"],
        project["version"],
        entry_points,
        {"madkit_snake.py": (EXAMPLE / "madkit_snake.py").read_text()},
    )
    only = ",".join([fakes_installed["MADKIT_PLUGINS"], *entry_points])
    monkeypatch.setenv("MADKIT_PLUGINS", only)
    return {**fakes_installed, "MADKIT_PLUGINS": only}


def test_example_registers_through_its_entry_point(snake_installed):
    registration = Registry.load().get("partitioner", "snake")
    assert (registration.plugin, registration.distribution, registration.version) == ("snake", "madkit-snake", "0.1.0")


def test_example_kind_is_usable_and_checked_in_a_spec(snake_installed, capsys):
    snake = 'model.partitioner={kind="snake", block_len=%d}'
    assert main(["validate", str(TINY_SPEC), "--set", snake % 16]) == 0
    assert main(["validate", str(TINY_SPEC), "--set", snake % 7]) == 2
    err = capsys.readouterr().err
    assert "model.partitioner.block_len: block_len 7 must be a positive divisor of the 16x16 = 256 cell grid" in err


def test_example_passes_its_own_tests(snake_installed, tmp_path):
    # the plugin author's checkout: its tests, run by pytest in a fresh process against the installed plugin
    checkout = tmp_path / "madkit-snake"
    shutil.copytree(EXAMPLE / "tests", checkout / "tests")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=checkout,
        # the site only, and only the snake plugin: what the doc tells authors to run
        env={
            **snake_installed,
            "PYTHONPATH": snake_installed["PYTHONPATH"].split(os.pathsep)[0],
            "MADKIT_PLUGINS": "snake",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    expected = sum(name.startswith("test_") for name in dir(PartitionerContract)) + 3  # contract + its own 3
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(rf"\b{expected} passed\b", result.stdout), result.stdout[-1000:]
