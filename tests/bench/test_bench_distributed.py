"""Smoke test of ``deeplora bench distributed``: one and two gloo processes at --quick size;
the bytes all-reduced per step are exactly the packed gradient buffer. Timings are never
asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deeplora.cli import main


def test_quick_run_compares_one_and_two_processes(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "distributed", "--quick", "--json", str(out)]) == 0
    assert "efficiency" in capsys.readouterr().out
    report = json.loads(out.read_text())
    one, two = report["results"]
    size = report["settings"]["size"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["entries_per_rank"] == report["settings"]["entries"]
    assert two["entries_per_rank"] == report["settings"]["entries"] // 2
    k = two["k"]
    assert two["bytes_per_step"] == (1 + 2 * size * k) * two["element_bytes"]
    assert one["bytes_per_step"] == 0 and one["efficiency"] == 1
    assert two["seconds_per_step"] > 0 and two["init_seconds"] > 0


def test_entries_beyond_half_the_matrix_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "distributed", "--size", "100", "--entries", "6000"]) == 2
    assert "lower it" in capsys.readouterr().err
