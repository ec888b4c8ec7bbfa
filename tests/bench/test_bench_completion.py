"""Smoke tests of ``deeplora bench completion``: it runs end to end at --quick size and
writes every section to the JSON file. Timings are never asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from deeplora.cli import main

torch.set_num_threads(1)


def test_quick_run_writes_every_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "completion", "--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "thread(s)" in printed and "results written to" in printed

    report = json.loads(out.read_text())
    assert report["benchmark"] == "completion"
    assert report["machine"]["torch_threads"] == 1
    sections = report["sections"]
    assert set(sections) == {"wide", "floor", "sample"}

    wide = sections["wide"]["rows"]
    assert [r["d"] for r in wide] == report["plan"]["sizes"]
    for row in wide:
        assert row["lr"] > 0
        assert row["compressed"]["seconds_per_step"] > 0
        assert row["wide"]["seconds_per_step"] > 0
        assert row["compressed"]["memory"]["peak_rss_mb"] > 0
        assert row["ratio_wide_over_compressed"]["seconds_per_step"] > 0
    assert wide[-1]["wide"]["estimated"]  # above full_wide_max: steps x seconds per step

    for row in sections["floor"]["rows"]:
        assert row["floor_s"] == pytest.approx(
            row["sddmm_s"] + row["spmm_rv_s"] + row["spmm_rta_s"])
        assert row["ratio"] > 0

    sample = sections["sample"]
    assert {"deep3_paper", "deep3_auto", "deep2", "soft", "hard", "als"} <= set(sample["methods"])
    assert any(m.startswith("deep3_rank") for m in sample["methods"])
    for method in sample["methods"].values():
        for rho in sample["rhos"]:
            assert 0 <= method["successes"][f"{rho:g}"] <= sample["seeds"]


@pytest.mark.parametrize("basis", [None, "gradient"])
def test_scale_section_runs_at_the_defaults_or_a_given_basis(tmp_path: Path,
                                                               basis: str | None) -> None:
    out = tmp_path / "bench.json"
    given = [] if basis is None else ["--scale-basis", basis]
    assert main(["bench", "completion", "--quick", "--only", "scale", "--scale", *given,
                 "--scale-minutes", "0.05", "--json", str(out)]) == 0
    scale = json.loads(out.read_text())["sections"]["scale"]
    assert scale["basis"] == (basis or "normalized")
    assert scale["r_hat"] >= 5  # r_hat from the data: at least the true rank here
    assert scale["shape"] == [3000, 3000] and scale["steps"] > 0
    assert math.isfinite(scale["final_rel_error"])


def test_only_selects_sections(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    assert main(["bench", "completion", "--quick", "--only", "floor", "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())["sections"]) == {"floor"}


def test_bad_size_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "completion", "--quick", "--sizes", "8", "--only", "floor"]) == 2
    assert "--sizes" in capsys.readouterr().err


def test_basis_section_compares_the_three_bases(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "basis.json"
    assert main(["bench", "completion", "--quick", "--only", "basis", "--json", str(out)]) == 0
    basis = json.loads(out.read_text())["sections"]["basis"]
    normalized = basis["normalized (the default)"]["cosines_left"]
    assert len(normalized) == 5 and all(0 <= c <= 1 for c in normalized)
    assert basis["q_plain_top"] > basis["sampling_rate"]
