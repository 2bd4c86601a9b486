"""docs/api.md: every Python example on the page runs, in order, in one fresh folder; and the
documentation points at nothing outside the repository."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from engine_fakes import one_thread  # noqa: F401  (autouse fixture: one intra-op thread)

import madkit

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def examples(page: Path) -> list[str]:
    return FENCE.findall(page.read_text())


def test_api_examples_run(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "experiments" / "tiny", tmp_path / "experiments" / "tiny")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MADKIT_CACHE_DIR", str(tmp_path / "cache"))
    blocks = examples(ROOT / "docs" / "api.md")
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/api.md example {i + 1}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    # what the comments on the page promise
    assert "(dict): train.stpes: unknown key; did you mean 'steps'?" in out
    assert "guidance 2 needs a class-conditional model" in out
    assert "train.lr 0.0001 -> 5e-05" in out
    assert (tmp_path / "emoji-0.png").is_file() and (tmp_path / "runs" / "tiny-tuned" / "checkpoints").is_dir()
    assert "keep 4 keeps all 4 blocks and leaves nothing to generate; use 0..3" in out
    assert "torch.Size([5, 3, 16, 16]) block 1/4" in out
    assert (tmp_path / "completions" / "grid.png").is_file() and (tmp_path / "trace-0.gif").is_file()


def test_public_names_are_exported():
    for name in madkit.__all__:
        assert getattr(madkit, name) is not None, name
    assert callable(madkit.load) and madkit.Pipeline.from_pretrained.__doc__


@pytest.mark.parametrize("pattern", [r"MADFORMER\.md", r"DESIGN\.md", r"PRACTICES\.md", r"ENV\.md", r"\.\./shared"])
def test_nothing_points_outside_the_repository(pattern):
    tracked = [
        p
        for folder in ("madkit", "plugins", "docs", "experiments", "tests", "benchmarks", "scripts")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".md", ".toml") and p.name != Path(__file__).name
    ]
    tracked += [ROOT / "README.md", ROOT / "pyproject.toml"]
    hits = [str(p.relative_to(ROOT)) for p in tracked if re.search(pattern, p.read_text(errors="ignore"))]
    assert hits == []
