"""Smoke test of ``deeplora bench datasets``: small tables end to end, the JSON report and the
verdicts. Timings are never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deeplora.bench.datasets import lowrank_table, verdict
from deeplora.cli import main

torch.set_num_threads(1)


def test_quick_run_writes_every_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("skimage")
    out = tmp_path / "datasets.json"
    assert main(["bench", "datasets", "--quick", "--only", "square x1", "image", "--ranks",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "winner" in printed and "summary" in printed
    report = json.loads(out.read_text())
    square, image = report["tables"]
    figures = [t["figure"] for t in report["targets"]]
    assert "image: deeplora relative error - the best" in figures
    assert all(t["verdict"] in ("met", "missed") for t in report["targets"])
    assert set(square["results"]) == {"deeplora", "soft-impute", "ALS"}
    assert square["results"]["deeplora"]["test"] < 1e-3  # exactly low rank: recovered
    assert set(square["ranks"]) == {"1x", "2x", "4x"}
    assert image["metric"] == "relative error" and image["parts"][2] == 64 * 64 - sum(
        image["parts"][:2])


def test_scaled_tables_hold_the_same_matrix() -> None:
    small, big = lowrank_table(60, 80, 1.0, 2.0), lowrank_table(60, 80, 1e3, 2.0)
    assert (big.train.values == 1e3 * small.train.values).all()
    assert (big.test.rows == small.test.rows).all()


def test_verdict_targets() -> None:
    t = lowrank_table(60, 80, 1.0, 2.0)
    ok = verdict(t, {"deeplora": {"test": 0.115}, "soft-impute": {"test": 0.1},
                     "ALS": {"test": 0.3}})
    assert ok == {"winner": "soft-impute", "within_2pct": True, "never_fails": True,
                  "gap": pytest.approx(0.015)}
    bad = verdict(t, {"deeplora": {"test": 0.6}, "soft-impute": {"test": 0.05},
                      "ALS": {"test": 0.3}})
    assert not bad["within_2pct"] and not bad["never_fails"]
