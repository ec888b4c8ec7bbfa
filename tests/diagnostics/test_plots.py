"""deeplora.diagnostics.plots: every figure is written as a PNG and an SVG (atomically, the
figure closed) from small hand-made recordings and curves; bad input is refused with a
ValueError that says what to pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeplora.diagnostics import plots
from deeplora.diagnostics.recorder import LayerTrace, Recording

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def trace(steps: int, k: int, depth: int = 3, seed: int = 0) -> LayerTrace:
    rng = np.random.default_rng(seed)
    growth = np.logspace(-3, 0, steps)[:, None]
    sv = np.sort(rng.uniform(0.1, 1.0, (steps, k)), axis=1)[:, ::-1] * growth
    sv[0] = 0.0  # dW = 0 at init (PEFT LoRA's B = 0)
    sv[:, -1] = np.nan  # nan padding: fewer than k singular values
    fsv = np.full((steps, depth, k), 1e-3)
    fsv[:, :, 0] = growth[:, 0, None] + 1e-3
    cos = np.clip(np.linspace(0.2, 1.0, steps)[:, None] - 0.1 * np.arange(k), 0, 1)
    return LayerTrace(
        singular_values=sv,
        factor_singular_values=fsv,
        cosines_left=cos,
        cosines_right=cos[:, ::-1].copy(),
        rank_atol=np.arange(steps) % k,
        rank_rtol=np.arange(steps) % k,
        outside=np.zeros(steps),
    )


def recording(layers: int = 2, steps: int = 4, k: int = 3, depth: int = 3) -> Recording:
    return Recording(
        steps=np.arange(steps) * 10,
        seconds=np.arange(steps) * 0.5,
        layers={f"encoder.layer.{i}.attention.self.query": trace(steps, k, depth, seed=i)
                for i in range(layers)},
        k=k,
        meta={"reference": "final", "rank_atol": 1e-3},
    )


def check_written(written: list[Path], stem: Path, *labels: str) -> str:
    """Both files exist at STEM.png / STEM.svg, are real images, and nothing else (no temporary
    file) is left in the folder; the figure was closed. Returns the SVG text."""
    import matplotlib.pyplot as plt

    png, svg = written
    assert png == stem.parent / f"{stem.name}.png" and svg == stem.parent / f"{stem.name}.svg"
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 1000
    text = svg.read_text(encoding="utf-8")
    assert "<svg" in text and text.rstrip().endswith("</svg>")
    for label in labels:
        assert label in text, label
    assert sorted(p.name for p in stem.parent.iterdir()) == sorted([png.name, svg.name])
    assert plt.get_fignums() == []
    return text


def test_singular_values(tmp_path: Path) -> None:
    stem = tmp_path / "sv"
    check_written(plots.plot_singular_values(recording(), stem), stem,
                  "training step", "top-3 singular values of the matrix (log)",
                  "rank threshold 0.001",
                  "encoder.layer.1.attention.self.query")  # fmt: skip


def test_singular_values_of_factors_one_layer_by_name(tmp_path: Path) -> None:
    stem = tmp_path / "svf"
    written = plots.plot_singular_values(recording(layers=3), stem, factors=True,
                                         layers="encoder.layer.2.attention.self.query",
                                         title="factors of one layer")  # fmt: skip
    text = check_written(written, stem, "factors of one layer", "each factor")
    assert "encoder.layer.0" not in text and "showing" not in text


def test_left_out_layers_are_named_in_the_title(tmp_path: Path) -> None:
    stem = tmp_path / "many"
    written = plots.plot_singular_values(recording(layers=3), stem, max_panels=2)
    text = check_written(written, stem, "showing 2 of 3 layers")
    assert "encoder.layer.2" not in text


def test_all_zero_singular_values_still_plot(tmp_path: Path) -> None:
    rec = recording(layers=1)
    rec.layers[next(iter(rec.layers))].singular_values[:] = 0.0
    stem = tmp_path / "zero"
    check_written(plots.plot_singular_values(rec, stem), stem, "all singular values zero")


def test_alignment(tmp_path: Path) -> None:
    stem = tmp_path / "alignment"
    check_written(plots.plot_alignment(recording(layers=4), stem), stem,
                  "cosine of principal angle", "left (U), solid", "right (V), dashed",
                  "the final subspaces")  # fmt: skip


def test_effective_rank_histogram(tmp_path: Path) -> None:
    stem = tmp_path / "ranks"
    ranks = {"PEFT LoRA": [8] * 6, "Deep LoRA": np.array([0, 0, 0, 1, 2, 4])}
    check_written(plots.plot_effective_rank_histogram(ranks, stem), stem,
                  "PEFT LoRA (6 updates)", "Deep LoRA (6 updates)", "number of updates",
                  "effective rank")  # fmt: skip


def test_recovery_skips_nan_and_takes_curves_of_other_lengths(tmp_path: Path) -> None:
    curves: dict[str, dict[str, Any]] = {
        "wide": {"step": [0, 10, 20, 30], "seconds": [0.0, 1.0, 2.0, 3.0],
                 "rel_error": [1.0, float("nan"), 1e-3, None], "loss": [1, 1, 1, 1]},
        "compressed": {"step": list(range(0, 100, 5)), "seconds": list(np.arange(20) * 0.01),
                       "rel_error": list(np.logspace(0, -12, 20))},
        "stalled": {"step": [0], "seconds": [0.0], "rel_error": [float("nan")]},
    }  # fmt: skip
    stem = tmp_path / "recovery"
    check_written(plots.plot_recovery(curves, stem, title="wide vs compressed"), stem,
                  "wide vs compressed", "gradient steps", "wall time (s)", "compressed",
                  "stalled (no finite error)")  # fmt: skip


def test_recovery_from_a_solver_history(tmp_path: Path) -> None:
    from deeplora.completion import FitHistory

    history = FitHistory()
    for step, err in enumerate([1.0, 0.1, 0.01]):
        history.append(step=step, loss=err, train_rmse=err, val_rmse=err, rel_error=err,
                       seconds=0.1 * step, lr=1.0)  # fmt: skip
    stem = tmp_path / "history"
    check_written(plots.plot_recovery({"run": history.to_dict()}, stem), stem, "run")


def test_lines(tmp_path: Path) -> None:
    series = {"depth 2": ([10, 20, 50], [1e-6, 1e-5, 1e-3]),
              "depth 3": ([10, 20, 50], [1e-9, 0.0, 1e-9])}  # fmt: skip
    stem = tmp_path / "lines"
    check_written(plots.plot_lines(series, stem, xlabel="width w", ylabel="relative error",
                                   logy=True, title="depth 2 vs 3"),
                  stem, "width w", "relative error", "depth 2", "depth 3")  # fmt: skip


def fewshot_summary() -> dict[str, Any]:
    cells = []
    for method, base in (("deep-lora", 0.7), ("lora", 0.6)):
        for n, rank in ((16, 4), (16, 8), (64, 8)):
            mean = None if (method, n, rank) == ("lora", 16, 4) else base + n / 1000
            cells.append({"method": method, "n": n, "rank": rank,
                          "score": {"mean": mean, "std": 0.02, "count": 3}})  # fmt: skip
    return {"cells": cells, "metric": "accuracy"}


def test_fewshot(tmp_path: Path) -> None:
    stem = tmp_path / "fewshot"
    written = plots.plot_fewshot(fewshot_summary(), stem, ns=(16, 64), ranks=(4, 8),
                                 base_rank=8, rank_n=16, majority=0.66)  # fmt: skip
    check_written(written, stem, "Deep LoRA", "PEFT LoRA", "majority class",
                  "training examples n", "accuracy vs rank (n = 16)")  # fmt: skip


def test_stems_with_dots_keep_their_name(tmp_path: Path) -> None:
    stem = tmp_path / "sub" / "gamma0.01"  # a missing folder is created
    written = plots.plot_lines({"a": ([1, 2], [1, 2])}, stem, xlabel="x (1)", ylabel="y (1)")
    check_written(written, stem)


def test_a_failed_write_leaves_no_file_and_closes_the_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    real = Figure.savefig

    def fail_on_svg(self: Figure, fname: Any, *args: Any, **kw: Any) -> None:
        if kw.get("format") == "svg":
            Path(fname).write_text("<svg half")  # a partial write, then a crash
            raise OSError("disk full")
        real(self, fname, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", fail_on_svg)
    stem = tmp_path / "broken"
    with pytest.raises(OSError, match="disk full"):
        plots.plot_lines({"a": ([1, 2], [3, 4])}, stem, xlabel="x (1)", ylabel="y (1)")
    # the PNG was complete and moved into place; the SVG's temporary file is gone
    assert [p.name for p in tmp_path.iterdir()] == ["broken.png"]
    assert plt.get_fignums() == []


# --------------------------------------------------------------------------- bad input
def bad_trace_length() -> Recording:
    rec = recording(layers=1)
    name = next(iter(rec.layers))
    rec.layers[name].singular_values = rec.layers[name].singular_values[:2]
    return rec


def no_steps() -> Recording:
    rec = recording(layers=1, steps=1)
    rec.steps = np.zeros(0, dtype=int)
    return rec


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s: plots.plot_singular_values(no_steps(), s), "no recorded steps"),
        (lambda s: plots.plot_singular_values(
            Recording(steps=np.arange(2), seconds=np.zeros(2), layers={}, k=2, meta={}), s),
         "no layers"),
        (lambda s: plots.plot_singular_values(recording(), s, layers=["nope"]),
         r"unknown layer name\(s\) 'nope'.*recording.layers"),
        (lambda s: plots.plot_alignment(recording(), s, layers=[]), "layers is empty"),
        (lambda s: plots.plot_singular_values(bad_trace_length(), s),
         "expected 2 dimensions with 4 rows"),
        (lambda s: plots.plot_alignment(recording(), s, max_panels=0), "max_panels"),
        (lambda s: plots.plot_singular_values(recording(), s.with_suffix(".png")),
         "without a suffix"),
        (lambda s: plots.plot_effective_rank_histogram({}, s), "ranks is empty"),
        (lambda s: plots.plot_effective_rank_histogram({"a": []}, s), r"ranks\['a'\] is empty"),
        (lambda s: plots.plot_effective_rank_histogram({"a": [1, 2.5]}, s),
         "non-negative integers"),
        (lambda s: plots.plot_effective_rank_histogram({"a": [-1]}, s), "non-negative integers"),
        (lambda s: plots.plot_recovery({}, s), "curves is empty"),
        (lambda s: plots.plot_recovery({"a": {"step": [0], "rel_error": [1.0]}}, s),
         r"lacks \['seconds'\]"),
        (lambda s: plots.plot_recovery(
            {"a": {"step": [0, 1], "seconds": [0.0], "rel_error": [1.0, 0.5]}}, s),
         "same length"),
        (lambda s: plots.plot_recovery(
            {"a": {"step": [0], "seconds": [0.0], "rel_error": [float("nan")]}}, s),
         "every rel_error is nan"),
        (lambda s: plots.plot_lines({}, s, xlabel="x", ylabel="y"), "series is empty"),
        (lambda s: plots.plot_lines({"a": ([1, 2], [1])}, s, xlabel="x", ylabel="y"),
         "2 xs and 1 ys"),
        (lambda s: plots.plot_lines({"a": ([1], [1])}, s, xlabel="", ylabel="y"),
         "xlabel is empty"),
        (lambda s: plots.plot_lines({"a": ([1], [-1])}, s, xlabel="x", ylabel="y", logy=True),
         "positive values on the log axes"),
        (lambda s: plots.plot_fewshot({"cells": []}, s, ns=[16], ranks=[8], base_rank=8,
                                      rank_n=16), "no 'cells'"),
        (lambda s: plots.plot_fewshot(fewshot_summary(), s, ns=[16, 256], ranks=[8],
                                      base_rank=8, rank_n=16),
         r"no cell for \(method, n, rank\) = \('deep-lora', 256, 8\)"),
    ],
)  # fmt: skip
def test_bad_input_is_refused(call: Any, match: str, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    with pytest.raises(ValueError, match=match):
        call(tmp_path / "figure")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file
    assert plt.get_fignums() == []


def test_importing_deeplora_leaves_pyplot_alone() -> None:
    code = ("import sys, deeplora, deeplora.diagnostics.plots; "
            "assert 'matplotlib.pyplot' not in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_recorded_run_plots(tmp_path: Path) -> None:
    """The recorder's own output (a depth-3 chain whose singular values grow one by one, and a
    saved-and-loaded copy of it) goes straight into the plots."""
    import torch

    from deeplora.diagnostics import SubspaceRecorder

    torch.manual_seed(0)
    factors = [1e-2 * torch.linalg.qr(torch.randn(6, 6))[0] for _ in range(3)]
    rec = SubspaceRecorder({"chain": lambda: factors, "first": lambda: factors[:1]}, k=4)
    for step in range(4):
        for f in factors:
            f[step, step] += 0.5  # a new direction each step
        rec.record(step)
    recorded = rec.finish()
    recorded.save(tmp_path / "rec.npz")
    loaded = type(recorded).load(tmp_path / "rec.npz")
    (tmp_path / "rec.npz").unlink()
    for name, call in (
        ("sv", lambda s: plots.plot_singular_values(loaded, s)),
        ("svf", lambda s: plots.plot_singular_values(loaded, s, factors=True, layers=["chain"])),
        ("align", lambda s: plots.plot_alignment(loaded, s)),
    ):
        folder = tmp_path / name
        folder.mkdir()
        check_written(call(folder / name), folder / name, "chain")
    ranks = {"chain": loaded.layers["chain"].rank_atol.tolist()}
    folder = tmp_path / "hist"
    folder.mkdir()
    check_written(plots.plot_effective_rank_histogram(ranks, folder / "h"), folder / "h")
