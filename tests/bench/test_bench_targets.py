"""The declared targets: verdicts, the Markdown the docs quote, and the files they are read
from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from deeplora.cli import main
from deeplora.errors import UserError
from deeplora.harness.targets import Target, markdown, read_targets, to_json


def test_verdicts() -> None:
    assert Target("t", 1.0, 1.10).verdict == "met"
    assert Target("t", 1.2, 1.10).verdict == "missed"
    assert Target("t", 60.0, 50.0, at_most=False).verdict == "met"
    assert Target("t", None, 1.0).verdict == "not measured"
    assert Target("t", math.nan, 1.0).verdict == "not measured"
    assert Target("t", math.inf, 30.0).verdict == "missed"  # never got there
    assert Target("t", 51.7, 50.0, at_most=False, estimated=True, unit="x").cells() == [
        "t", "51.7x (estimate)", ">= 50x", "met"]


def test_markdown_comes_from_the_saved_table(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rows = [Target("train step ratio", 0.98, 1.10), Target("inference ratio", 1.2, 1.05)]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmark": "x", "targets": to_json(rows)}))
    assert read_targets([path]) == rows
    assert main(["bench", "targets", str(path)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == markdown(rows)
    assert printed.splitlines()[-1] == "| inference ratio | 1.2 | <= 1.05 | missed |"


def test_files_without_targets_are_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"benchmark": "x"}))
    with pytest.raises(UserError, match="holds no targets"):
        read_targets([old])
    with pytest.raises(UserError, match="does not exist"):
        read_targets([tmp_path / "missing.json"])


def test_a_completion_run_saves_its_targets(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    assert main(["bench", "completion", "--quick", "--only", "floor", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())["targets"]
    assert [t["figure"] for t in saved] == [
        "compressed step / its floor (SDDMM + 2 SpMM), d = 30",
        "compressed step / its floor (SDDMM + 2 SpMM), d = 60"]
    assert all(t["verdict"] in ("met", "missed") for t in saved)
