"""The subspace recorder: its numbers against direct computation on small cases, known
singular values and subspaces, the invariant slice of a real deep factorization run, adapters
(Deep LoRA and PEFT LoRA), the Hugging Face callback, and the saved formats."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from deeplora.completion import (
    CompressedConfig,
    CompressedSolver,
    Factorization,
    WideConfig,
    WideSolver,
    random_low_rank,
)
from deeplora.diagnostics import (
    Recording,
    SubspaceRecorder,
    factored_svd,
    model_sources,
    predicted_bases,
    solver_sources,
    weight_sources,
)
from deeplora.subspace import chain, orth

torch.set_num_threads(1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthonormal(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return orth(torch.randn(rows, cols, generator=_gen(seed), dtype=torch.float64))


def _known(s: list[float], shape=(20, 15), seed: int = 0):
    """``M = U diag(s) V^T`` as the thin factors ``[diag(s) V^T, U]``, with ``U``, ``V``."""
    u = _orthonormal(shape[0], len(s), seed)
    v = _orthonormal(shape[1], len(s), seed + 1)
    return [torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T, u], u, v


# ----------------------------------------------------------------------------- factored_svd


@pytest.mark.parametrize("shapes", [
    [(8, 20), (8, 8), (15, 8)],  # thin: Deep LoRA-like, width 8 < 15
    [(10, 20), (3, 10), (10, 3), (15, 10)],  # thin, the narrowest point in the middle
    [(4, 9)],  # one dense factor
    [(12, 12), (12, 12), (12, 12)],  # wide: the deep factorization layers
    [(20, 6), (5, 20)],  # inner width above min(out, in): formed densely
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_factored_svd_matches_the_dense_svd(shapes, dtype):
    g = _gen(1)
    factors = [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    dense = chain([f.double() for f in factors])
    u, s, v = factored_svd(factors)
    assert u.dtype == s.dtype == v.dtype == torch.float64
    expected = torch.linalg.svdvals(dense)
    assert len(s) == min([shapes[0][1], shapes[-1][0]] + [r for r, _ in shapes[:-1]])
    assert torch.allclose(s, expected[: len(s)], rtol=1e-10, atol=1e-12)
    assert torch.all(expected[len(s):] < 1e-10)  # what the thin form leaves out is zero
    assert torch.all(s[:-1] >= s[1:])
    assert torch.allclose(u @ torch.diag(s) @ v.T, dense, atol=1e-10)
    eye = torch.eye(len(s), dtype=torch.float64)
    assert torch.allclose(u.T @ u, eye, atol=1e-10) and torch.allclose(v.T @ v, eye, atol=1e-10)


def test_factored_svd_rejects_factors_that_do_not_chain():
    with pytest.raises(ValueError, match="do not chain"):
        factored_svd([torch.zeros(3, 4), torch.zeros(5, 2)])
    with pytest.raises(ValueError, match="empty"):
        factored_svd([])


# ----------------------------------------------------------------------------- known answers


def test_known_singular_values_and_principal_angles():
    """dW = U diag(s) V^T against a reference rotated by a known angle in one direction."""
    s = [3.0, 2.0, 0.5]
    factors, u, v = _known(s)
    theta = 0.3
    w = orth(torch.cat([u, torch.randn(20, 1, generator=_gen(5), dtype=torch.float64)], 1))[:, 3]
    u_ref = torch.stack([u[:, 0], u[:, 1], math.cos(theta) * u[:, 2] + math.sin(theta) * w], 1)
    u_ref = u_ref @ _orthonormal(3, 3, 9)  # any basis of the same span
    rec = SubspaceRecorder({"m": lambda: factors}, k=5, reference={"m": (u_ref, v)})
    rec.record(0)
    trace = rec.finish().layers["m"]
    np.testing.assert_allclose(trace.singular_values[0, :3], s, rtol=1e-12)
    assert np.isnan(trace.singular_values[0, 3:]).all()  # rank 3 < k: nan-padded
    np.testing.assert_allclose(trace.cosines_left[0, :3], [1, 1, math.cos(theta)], atol=1e-12)
    np.testing.assert_allclose(trace.cosines_right[0, :3], 1, atol=1e-12)
    np.testing.assert_allclose(trace.factor_singular_values[0, 1, :3], 1, atol=1e-12)  # U
    np.testing.assert_allclose(trace.factor_singular_values[0, 0, :3], s, rtol=1e-12)


def test_first_and_final_references_follow_a_rotating_update():
    """The top-2 left subspace turns by theta per step: cosines against the first and the last
    record are cos(step * theta) and cos((last - step) * theta)."""
    u = _orthonormal(10, 3, 2)
    v = _orthonormal(8, 2, 3)
    theta = 0.2
    state = {"t": 0}

    def source() -> list[torch.Tensor]:
        a = state["t"] * theta
        left = torch.stack([u[:, 0], math.cos(a) * u[:, 1] + math.sin(a) * u[:, 2]], 1)
        return [torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)) @ v.T, left]

    first = SubspaceRecorder({"m": source}, k=2, reference="first")
    final = SubspaceRecorder({"m": source}, k=2)  # "final" keeps float32 vectors
    for t in range(4):
        state["t"] = t
        first.record(t)
        final.record(t)
    cf = first.finish().layers["m"].cosines_left
    cl = final.finish().layers["m"].cosines_left
    steps = np.arange(4)
    np.testing.assert_allclose(cf[:, 1], np.cos(steps * theta), atol=1e-12)
    np.testing.assert_allclose(cl[:, 1], np.cos((3 - steps) * theta), atol=1e-6)
    np.testing.assert_allclose(cf[:, 0], 1, atol=1e-12)
    np.testing.assert_allclose(final.finish().layers["m"].cosines_right, 1, atol=1e-6)


def test_effective_ranks_use_both_thresholds():
    factors, _, _ = _known([1.0, 0.5, 5e-3, 5e-4])
    zero = [torch.zeros(4, 6), torch.zeros(5, 4)]
    rec = SubspaceRecorder({"m": lambda: factors, "zero": lambda: zero}, k=4,
                           rank_atol=1e-3, rank_rtol=1e-2)
    rec.record(0)
    layers = rec.finish().layers
    assert layers["m"].rank_atol.tolist() == [3]  # s_i > 1e-3
    assert layers["m"].rank_rtol.tolist() == [2]  # s_i > 1e-2 * s_1
    assert layers["zero"].rank_atol.tolist() == [0] and layers["zero"].rank_rtol.tolist() == [0]
    assert layers["m"].rank_atol.dtype == np.int64


def test_outside_is_zero_inside_the_slice_and_known_when_partly_outside():
    m0 = torch.randn(9, 7, generator=_gen(4), dtype=torch.float64)
    basis_u, basis_v = _orthonormal(9, 3, 6), _orthonormal(7, 3, 7)
    u, v = basis_u[:, :2], basis_v[:, :2]
    a = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    c = 0.7
    inside = m0 + u @ a @ v.T
    partly = inside + c * torch.outer(basis_u[:, 2], basis_v[:, 2])
    mats = {"inside": inside, "partly": partly, "still": m0}
    slices = {n: (m0, u @ _orthonormal(2, 2, 8), v) for n in mats}  # any basis of the span
    rec = SubspaceRecorder({n: (lambda m=m: [m]) for n, m in mats.items()}, k=3, slices=slices)
    rec.record(0)
    layers = rec.finish().layers
    assert layers["inside"].outside[0] < 1e-14
    expected = c / math.sqrt(float((a**2).sum()) + c**2)
    assert layers["partly"].outside[0] == pytest.approx(expected, rel=1e-12)
    assert layers["still"].outside.tolist() == [0.0]  # D = 0


# ----------------------------------------------------------------------------- solvers


def test_wide_factorization_moves_only_the_predicted_slice():
    """docs/METHOD.md 2: W_l(t) - W_l(0) stays in span(U_l) x span(V_l) (2r wide), only 2r singular
    values of each layer leave eps, and the top-r directions lie in the predicted slice."""
    d, r, eps = 12, 2, 1e-3
    target = random_low_rank(d, d, r, seed=1).to_dense()
    solver = WideSolver(Factorization(target), WideConfig(
        depth=3, init_scale=eps, max_steps=400, progress=False, seed=0, eval_every=100))
    start = [w.clone() for w in solver.weights]
    spectra = SubspaceRecorder.from_solver(solver, r_hat=r, k=d, every=20)
    top = SubspaceRecorder.from_solver(solver, r_hat=r, k=r, every=50, reference="predicted")
    spectra.record(0)

    def both(s):
        spectra(s)
        top(s)

    solver.run(callback=both)
    rec = spectra.finish()
    assert rec.steps.tolist() == list(range(0, 401, 20))
    assert set(rec.layers) == {"W1", "W2", "W3", "end_to_end"}
    for name, trace in rec.layers.items():
        assert trace.outside is not None and trace.outside.max() < 1e-6, name
    for i, w0 in enumerate(start):
        assert float((solver.weights[i] - w0).norm()) > 1e-2 * eps  # the layers did move
        s = rec.layers[f"W{i + 1}"].factor_singular_values[-1, 0]
        rel = np.abs(s - eps) / eps
        assert np.sum(rel > 1e-3) == 2 * r  # exactly 2r have left eps ...
        assert np.sum(rel < 1e-8) == d - 2 * r  # ... the rest stayed there
        assert rec.layers[f"W{i + 1}"].factor_singular_values[0, 0] == pytest.approx(eps)
    for trace in top.finish().layers.values():
        np.testing.assert_allclose(trace.cosines_left, 1, atol=1e-9)
        np.testing.assert_allclose(trace.cosines_right, 1, atol=1e-9)


def test_predicted_bases_are_orthonormal_and_chained():
    target = random_low_rank(10, 10, 2, seed=3).to_dense()
    solver = WideSolver(Factorization(target), WideConfig(depth=3, progress=False))
    _, grad_f = solver.objective.dense(chain(solver.weights))
    from deeplora.subspace import chain_grads

    grad = chain_grads(solver.weights, grad_f)[0]
    bases = predicted_bases(solver.weights, grad, 2, solver.init_scale)
    eye = torch.eye(4, dtype=torch.float64)
    for (u, _), (_, v_next) in itertools.pairwise(bases):
        assert torch.allclose(v_next, u)
    for u, v in bases:
        assert u.shape == v.shape == (10, 4)
        assert torch.allclose(u.T @ u, eye, atol=1e-12) and torch.allclose(v.T @ v, eye, atol=1e-12)
    with pytest.raises(ValueError, match="r_hat"):
        predicted_bases(solver.weights, grad, 6, 1e-3)


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_compressed_sources_match_the_solver_orientation(shape):
    target = random_low_rank(*shape, 2, seed=1).to_dense()
    solver = CompressedSolver(target, CompressedConfig(r_hat=2, progress=False))
    for _ in range(20):
        solver.step()
    sources = solver_sources(solver)
    assert set(sources) == {"inner1", "inner2", "inner3", "end_to_end"}
    assert torch.allclose(chain(sources["end_to_end"]()), solver.end_to_end(), atol=1e-14)
    assert torch.equal(sources["inner2"]()[0], solver.inner[1])


def test_run_callback_sees_every_step_and_a_back_off_drops_records():
    target = random_low_rank(8, 8, 2, seed=2).to_dense()
    seen: list[int] = []
    solver = WideSolver(Factorization(target), WideConfig(depth=3, max_steps=30, progress=False))
    solver.run(callback=lambda s: seen.append(s.t))
    assert seen == list(range(1, 31))

    rec = SubspaceRecorder({"m": lambda: [torch.eye(3)]}, k=1)
    fake = SimpleNamespace(t=0)
    for t in [1, 2, 3, 4, 5, 3, 4]:  # a back-off rewound to step 2
        fake.t = t
        rec(fake)  # type: ignore[arg-type]
    out = rec.finish()
    assert out.steps.tolist() == [1, 2, 3, 4]
    assert out.meta["dropped"] == 3 and out.meta["records"] == 7


def test_a_real_back_off_keeps_the_records_increasing():
    target = random_low_rank(8, 8, 2, seed=2).to_dense()
    solver = WideSolver(Factorization(target), WideConfig(
        depth=3, lr_factor=12.0, max_steps=300, eval_every=10, progress=False, init_scale=0.1))
    rec = SubspaceRecorder.from_solver(solver, k=2)
    result = solver.run(callback=rec)
    assert solver.backoff_steps, "the test needs a back-off; raise lr_factor"
    steps = rec.finish().steps
    assert np.all(np.diff(steps) > 0) and steps[-1] == result.steps
    assert rec.finish().meta["dropped"] > 0


def test_from_solver_checks_its_inputs():
    target = random_low_rank(8, 8, 2, seed=2).to_dense()
    solver = WideSolver(Factorization(target), WideConfig(depth=3, progress=False))
    solver.step()
    solver.t = 1
    with pytest.raises(ValueError, match="before running"):
        SubspaceRecorder.from_solver(solver, r_hat=2)
    comp = CompressedSolver(target, CompressedConfig(r_hat=2, progress=False))
    with pytest.raises(ValueError, match="WideSolver"):
        SubspaceRecorder.from_solver(comp, r_hat=2)
    with pytest.raises(ValueError, match="WideSolver or CompressedSolver"):
        solver_sources(object())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- models

transformers = pytest.importorskip("transformers")

from ..adapters.conftest import ARCHS, build, perturb  # noqa: E402


def test_deep_lora_bert_through_on_step():
    from deeplora.adapters import DeepLoraConfig, adapter_layers, singular_values, wrap

    arch = ARCHS["bert"]
    model = wrap(build(arch), DeepLoraConfig(target_modules=["query", "value"]))
    perturb(model, scale=0.3)
    sources = model_sources(model)
    assert set(sources) == set(adapter_layers(model)) and len(sources) == 4
    rec = SubspaceRecorder.from_model(model, k=4, every=2)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05)
    rec.maybe_record(0)
    for step in range(1, 7):
        opt.zero_grad()
        arch.loss(model).backward()
        opt.step()
        rec.on_step(step, np.arange(2), 0.5)  # deeplora.finetune.Trainer's hook signature
    out = rec.finish()
    assert out.steps.tolist() == [0, 2, 4, 6]
    assert np.all(np.diff(out.seconds) >= 0) and rec.seconds_per_record > 0
    for path, s in singular_values(model).items():
        trace = out.layers[path]
        np.testing.assert_allclose(trace.singular_values[-1], s[:4].numpy(), rtol=1e-5)
        assert trace.factor_singular_values.shape == (4, 3, 4)
        np.testing.assert_allclose(trace.cosines_left[-1], 1, atol=1e-5)  # final vs itself
        assert trace.outside is None
    assert out.meta["shapes"][next(iter(out.layers))] == [32, 32]


def test_peft_lora_model_sources():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = peft.get_peft_model(
        build(ARCHS["bert"]),
        peft.LoraConfig(r=3, lora_alpha=6, target_modules=["query", "value"],
                        init_lora_weights=False),
    )
    sources = model_sources(model)
    assert len(sources) == 4
    rec = SubspaceRecorder.from_model(model, k=4, reference="first")
    rec.record(0)
    out = rec.finish()
    for path, src in sources.items():
        layer = model.get_submodule(path)
        delta = layer.get_delta_weight("default").detach().double()
        assert torch.allclose(chain(src()).double(), delta, atol=1e-6)
        np.testing.assert_allclose(out.layers[path].singular_values[0, :3],
                                   torch.linalg.svdvals(delta)[:3].numpy(), rtol=1e-5)
        assert np.isnan(out.layers[path].singular_values[0, 3])  # rank 3 < k
    with pytest.raises(ValueError, match="adapters \\['default'\\]"):
        model_sources(model, "other")


def test_weight_sources_track_full_fine_tuning():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    sources = weight_sources(model, ["0.weight", "2.weight"])
    rec = SubspaceRecorder(sources, k=3)
    rec.record(0)
    x, y = torch.randn(6, generator=_gen(1)), torch.randn(5, generator=_gen(2))
    with torch.no_grad():
        model[0].weight += torch.outer(y, x)  # a rank-1 change
    rec.record(1)
    out = rec.finish().layers
    np.testing.assert_allclose(out["0.weight"].singular_values[:, 0],
                               [0, float(x.norm() * y.norm())], rtol=1e-5, atol=1e-7)
    assert out["0.weight"].rank_atol.tolist() == [0, 1]
    assert out["2.weight"].rank_atol.tolist() == [0, 0]
    assert out["0.weight"].factor_singular_values.shape == (2, 1, 3)
    with pytest.raises(ValueError, match="no parameter"):
        weight_sources(model, ["1.weight"])
    with pytest.raises(ValueError, match="only matrices"):
        weight_sources(model, ["0.bias"])


def test_hf_callback_driven_by_hand(tmp_path):
    from deeplora.adapters import DeepLoraConfig, wrap
    from deeplora.diagnostics.hf import RecorderCallback

    model = wrap(build(ARCHS["bert"]), DeepLoraConfig(target_modules=["query", "value"]))
    callback = RecorderCallback(k=2, every=3, save_path=tmp_path / "rec.json")
    assert isinstance(callback, transformers.TrainerCallback)
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    callback.on_train_begin(None, state, None, model=model)
    for step in range(1, 8):
        perturb(model, seed=step)
        state.global_step = step
        callback.on_step_end(None, state, None, model=model)
    callback.on_train_end(None, state, None, model=model)
    assert callback.recording is not None
    assert callback.recording.steps.tolist() == [0, 3, 6, 7]  # the final step is added
    assert len(callback.recording.layers) == 4
    assert Recording.load(tmp_path / "rec.json").steps.tolist() == [0, 3, 6, 7]

    given = SubspaceRecorder.from_model(model, k=1)
    with pytest.raises(ValueError, match="not both"):
        RecorderCallback(given, k=2)
    with pytest.raises(ValueError, match="Deep LoRA or PEFT"):
        RecorderCallback().on_train_begin(None, state, None, model=nn.Linear(2, 2))


def test_hf_module_imports_without_transformers(monkeypatch):
    import importlib.util
    import sys

    import deeplora.diagnostics.hf as hf

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    spec = importlib.util.spec_from_file_location("deeplora.diagnostics._hf_probe", hf.__file__)
    assert spec is not None and spec.loader is not None
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    with pytest.raises(ImportError, match="needs transformers"):
        probe.RecorderCallback()


# ----------------------------------------------------------------------------- saving


def _sample_recording() -> Recording:
    factors, u, v = _known([2.0, 1.0], shape=(6, 5))
    m0 = chain(factors)
    state = {"t": 0.0}
    rec = SubspaceRecorder(
        {"a": lambda: [factors[0] * (1 + state["t"]), factors[1]],
         "b": lambda: [m0 + state["t"] * torch.outer(u[:, 0], v[:, 0])]},
        k=4, slices={"b": (m0, u, v)})
    for t in range(3):
        state["t"] = float(t)
        rec.record(10 * t)
    return rec.finish()


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_save_and_load_round_trip(tmp_path, suffix):
    rec = _sample_recording()
    path = tmp_path / f"sub/rec{suffix}"
    rec.save(path)
    back = Recording.load(path)
    assert back.k == rec.k and list(back.layers) == list(rec.layers)
    assert back.steps.tolist() == rec.steps.tolist() and back.steps.dtype == np.int64
    assert back.meta == json.loads(json.dumps(rec.meta))
    for name, trace in rec.layers.items():
        other = back.layers[name]
        for f in ("singular_values", "factor_singular_values", "cosines_left", "cosines_right",
                  "rank_atol", "rank_rtol", "outside"):
            a, b = getattr(trace, f), getattr(other, f)
            if a is None:
                assert b is None
                continue
            assert a.shape == b.shape and a.dtype == b.dtype, f
            np.testing.assert_array_equal(a, b)  # nan in the same places; json keeps repr
    assert rec.layers["a"].outside is None and rec.layers["b"].outside is not None
    assert not list(path.parent.glob(".*.tmp"))  # atomic: no temporary left behind


def test_load_refuses_other_files(tmp_path):
    rec = _sample_recording()
    rec.save(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    (tmp_path / "kind.json").write_text(json.dumps({**data, "kind": "deeplora.checkpoint"}))
    with pytest.raises(ValueError, match=r"expected a 'deeplora\.recording'"):
        Recording.load(tmp_path / "kind.json")
    (tmp_path / "new.json").write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        Recording.load(tmp_path / "new.json")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a deeplora recording"):
        Recording.load(tmp_path / "other.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        Recording.load(tmp_path / "broken.npz")
    with pytest.raises(ValueError, match=r"\.json or \.npz"):
        rec.save(tmp_path / "r.csv")
    with pytest.raises(FileNotFoundError):
        Recording.load(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_name_the_problem():
    src = {"m": lambda: [torch.eye(3)]}
    with pytest.raises(ValueError, match="wrap it with Deep LoRA or PEFT LoRA"):
        model_sources(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="k must be"):
        SubspaceRecorder(src, k=0)
    with pytest.raises(ValueError, match="every must be"):
        SubspaceRecorder(src, every=0)
    with pytest.raises(ValueError, match="reference must be one of"):
        SubspaceRecorder(src, reference="best")
    with pytest.raises(ValueError, match="missing \\['m'\\], unknown \\['n'\\]"):
        SubspaceRecorder(src, reference={"n": (torch.eye(3), torch.eye(3))})
    with pytest.raises(ValueError, match="needs a slice for every source"):
        SubspaceRecorder(src, reference="predicted")
    with pytest.raises(ValueError, match="at least one source"):
        SubspaceRecorder({})
    with pytest.raises(ValueError, match="not a source"):
        SubspaceRecorder(src, slices={"x": (torch.zeros(3, 3), torch.eye(3), torch.eye(3))})
    rec = SubspaceRecorder(src, reference={"m": (torch.eye(4)[:, :2], torch.eye(3)[:, :1])})
    with pytest.raises(ValueError, match="4 and 3 rows"):
        rec.record(0)
    rec = SubspaceRecorder(src, steps=[5, 7])
    with pytest.raises(ValueError, match="nothing was recorded"):
        rec.finish()
    assert not rec.maybe_record(6) and rec.maybe_record(7) and not rec.maybe_record(7)
    with pytest.raises(ValueError, match="not after the last recorded step"):
        rec.record(7)
