"""The matrix experiments of ``deeplora reproduce`` (1 invariance, 2 trajectories, 3 rank-sweep,
4 depth-width) end to end at the smoke size: the files, the key numbers, and checks that fail
when an experiment computes the wrong thing (more than 2r singular values moving, a change
outside the predicted slice, compressed and wide factorization parting ways, gamma = 0
recovering, depth making no difference)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deeplora.cli import main
from deeplora.diagnostics.recorder import Recording
from deeplora.experiments import run_experiment

from .files import figures, load

torch.set_num_threads(1)


def first_below(history: dict[str, list[float]], error: float) -> int | None:
    for step, e in zip(history["step"], history["rel_error"]):
        if e is not None and e <= error:
            return int(step)
    return None


# --------------------------------------------------------------------------- 1 invariance
def test_invariance_smoke_only_2r_singular_values_move(tmp_path: Path) -> None:
    record = run_experiment("invariance", "smoke", tmp_path)
    folder = tmp_path / "invariance"
    assert load(folder) == json.loads(json.dumps(record))
    figures(folder, "singular_values", "outside", "eps_gap")
    r, two_r = record["settings"]["rank"], record["two_r"]
    assert two_r == 2 * r
    assert record["run"]["final_rel_error"] < 1e-3  # it learned the target, so things moved
    eps = record["settings"]["init_scale"]
    for name in ("W1", "W2", "W3"):
        layer = record["layers"][name]
        # the theorem: at most 2r singular values leave eps; here all r learned ones and the
        # r they pair with in the slice do
        assert layer["moved_max"] <= two_r and layer["moved_final"] == two_r
        assert layer["largest_rest_deviation"] < 1e-8  # the rest stay at eps
        assert layer["smallest_moved_deviation"] > 1e-3
        assert layer["outside_max"] < 1e-6  # the change stays in the predicted slice
        top = np.array(layer["final_singular_values"])
        assert (top[:r] > 100 * eps).all() and np.allclose(top[two_r:], eps, rtol=1e-6)
    assert record["outside_max"] < 1e-6 and record["outside_end_to_end_max"] < 1e-6
    # the recording on disk is the one the numbers came from
    recording = Recording.load(folder / "recording.npz")
    assert recording.steps.tolist() == record["record_steps"]
    assert recording.steps[0] == 0 and recording.steps[-1] == record["run"]["steps"]
    outside = recording.layers["W1"].outside
    assert outside is not None and float(np.nanmax(outside)) == record["layers"]["W1"][
        "outside_max"]
    assert "theorem: at most 2r = 4" in "\n".join(record["summary"])
    assert record["settings"]["threads"] == record["machine"]["torch_threads"]


# --------------------------------------------------------------------------- 2 trajectories
def test_trajectories_smoke_compressed_follows_wide_and_gamma_zero_stalls(
    tmp_path: Path,
) -> None:
    record = run_experiment("trajectories", "smoke", tmp_path)
    folder = tmp_path / "trajectories"
    assert load(folder) == json.loads(json.dumps(record))
    figures(folder, "factorization", "completion", "gap")
    fact, comp = record["factorization"], record["completion"]
    every = record["settings"]["eval_every"]
    # factorization: the same trajectory (up to the dropped eps^3 remainder)
    assert fact["compressed"]["gamma"] == 0.0
    assert fact["max_gap"] is not None and fact["max_gap"] < 1e-5
    assert len(fact["gap"]) >= 5
    assert abs(fact["wide"]["steps_to_1e-03"] - fact["compressed"]["steps_to_1e-03"]) <= every
    assert fact["wide"]["lr"] == fact["compressed"]["lr"]
    # completion: gamma = 0.01 recovers, gamma = 0 stalls with the same budget
    assert comp["compressed"]["gamma"] == 0.01
    assert comp["compressed"]["steps_to_1e-03"] is not None
    assert comp["wide"]["steps_to_1e-03"] is not None
    zero = comp["compressed_gamma0"]
    assert zero["steps"] == max(comp["wide"]["steps"], comp["compressed"]["steps"])
    assert zero["final_rel_error"] > 0.1
    assert zero["final_rel_error"] > 100 * comp["compressed"]["final_rel_error"]
    for res in (fact, comp):
        for key in ("wide", "compressed"):
            run = res[key]
            assert run["steps_to_1e-03"] == first_below(run["history"], 1e-3)
        ratio = res["ratio_wide_over_compressed"]["seconds_to_1e-03"]
        assert ratio == pytest.approx(res["wide"]["seconds_to_1e-03"]
                                      / res["compressed"]["seconds_to_1e-03"])
    assert "stalls" in "\n".join(record["summary"])


# --------------------------------------------------------------------------- 3 rank sweep
def test_rank_sweep_smoke_compressed_and_narrow_reach_the_target(tmp_path: Path) -> None:
    record = run_experiment("rank-sweep", "smoke", tmp_path)
    folder = tmp_path / "rank-sweep"
    assert load(folder) == json.loads(json.dumps(record))
    figures(folder, "steps", "seconds", "recovery")
    rows = record["rows"]
    assert [row["rank_hat"] for row in rows] == record["settings"]["rank_hats"] == [2, 4]
    lr = record["settings"]["lr"]
    for row in rows:
        assert row["width"] == 2 * row["rank_hat"]
        for key in ("compressed", "narrow"):
            run = row[key]
            assert run["lr"] == lr  # one step for every run
            assert run["stopped"] == "target_error" and run["final_rel_error"] <= 1e-3
            assert run["steps_to_1e-03"] == first_below(run["history"], 1e-3) == run["steps"]
            assert run["seconds_to_1e-03"] > 0
        assert row["steps_ratio_narrow_over_compressed"] == pytest.approx(
            row["narrow"]["steps"] / row["compressed"]["steps"])
    assert "~19,500" in "\n".join(record["summary"])


# --------------------------------------------------------------------------- 4 depth-width
def test_depth_width_smoke_depth_three_recovers_at_every_width(tmp_path: Path) -> None:
    record = run_experiment("depth-width", "smoke", tmp_path)
    folder = tmp_path / "depth-width"
    assert load(folder) == json.loads(json.dumps(record))
    figures(folder, "error_vs_width", "recovery")
    widths = record["settings"]["widths"]
    cells = {(c["depth"], c["width"]): c for c in record["cells"]}
    assert set(cells) == {(d, w) for d in (2, 3) for w in widths}
    r = record["settings"]["rank"]
    for w in widths:
        assert cells[(3, w)]["median_rel_error"] < 1e-4  # depth 3 recovers at every width
    assert cells[(2, r)]["median_rel_error"] < 1e-4  # width r: a rank constraint
    # depth 2 wider than r fits the entries but not the target
    assert cells[(2, max(widths))]["median_rel_error"] > 1e-2
    for cell in record["cells"]:
        assert [run["final_rel_error"] for run in cell["runs"]] == [cell["median_rel_error"]]


# --------------------------------------------------------------------------- CLI
def test_cli_reproduce_invariance_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:  # fmt: skip
    assert main(["reproduce", "invariance", "--smoke", "--out", str(tmp_path),
                 "--no-progress"]) == 0  # fmt: skip
    folder = tmp_path / "invariance"
    record = load(folder)
    assert record["experiment"] == "invariance" and record["size"] == "smoke"
    figures(folder, "singular_values", "outside")
    out = capsys.readouterr().out
    assert "== invariance" in out and "theorem: at most 2r" in out and str(folder) in out


def test_cli_reproduce_unknown_experiment_exits_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "no-such-experiment", "--smoke", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert not (tmp_path / "no-such-experiment").exists()
