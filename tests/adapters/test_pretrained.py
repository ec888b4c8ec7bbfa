"""DeepLoraModel: PEFT's habits (save/load, counts, switching, merge, generate) and Hugging Face
``Trainer``: checkpoints that hold the adapter, resume, ``save_model`` then ``from_pretrained``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deeplora.adapters import DeepLoraConfig, DeepLoraModel, parameter_groups
from deeplora.adapters.io import META_NAME

from .conftest import ARCHS, Arch, build, perturb


def wrapped(arch: Arch, seed: int = 0, **config: object) -> DeepLoraModel:
    settings = {"rank": 4, "target_modules": "all-linear", "modules_to_train": arch.head,
                **config}  # fmt: skip
    model = DeepLoraModel(build(arch), DeepLoraConfig(**settings))  # type: ignore[arg-type]
    perturb(model.wrapped, seed=seed)
    return model


def test_save_pretrained_round_trip_with_peft_habits(arch: Arch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    model = wrapped(arch)
    with torch.no_grad():
        expected = arch.logits(model)
        with model.disable_adapter():
            base = arch.logits(model)
    assert not torch.allclose(expected, base)  # the adapter is not a no-op
    model.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / META_NAME).is_file()
    saved = load_file(tmp_path / "out" / "deeplora_adapter.safetensors")
    assert all(k.startswith(("layers.", "trained.")) for k in saved)  # no base weight
    loaded = DeepLoraModel.from_pretrained(build(arch), tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(arch.logits(loaded), expected)
    assert type(loaded).__name__ == f"DeepLora{type(loaded.wrapped).__name__}"
    assert not any(p.requires_grad for p in loaded.parameters())  # frozen unless is_trainable
    trainable, total = model.get_nb_trainable_parameters()
    model.print_trainable_parameters()
    assert capsys.readouterr().out == (f"trainable params: {trainable:,} || all params: "
                                       f"{total:,} || trainable%: "
                                       f"{100 * trainable / total:.4f}\n")  # fmt: skip
    assert model.config is model.wrapped.config  # the base model's attributes


def test_adapters_switch_merge_and_unload() -> None:
    arch = ARCHS["bert"]
    model = wrapped(arch)
    model.add_adapter("other", DeepLoraConfig(rank=2, target_modules="query-value"))
    assert model.active_adapter == "other" and set(model.peft_config) == {"default", "other"}
    model.set_adapter("default")
    with torch.no_grad():
        expected = arch.logits(model)
        merged = model.merge_and_unload()
        assert not any("Deep" in type(m).__name__ for m in merged.modules())
        torch.testing.assert_close(arch.logits(merged), expected, atol=1e-5, rtol=1e-5)


def test_parameter_groups_of_a_compressed_deep_lora_model() -> None:
    """``optimizers=(AdamW(parameter_groups(model, lr)), None)`` gives a ``Trainer`` the
    compressed adapter's rates: inner factors at lr * 8 / rank, outer at gamma times that."""
    arch = ARCHS["bert"]
    config = DeepLoraConfig(init="compressed", rank=4, modules_to_train=["classifier"])
    model = DeepLoraModel(build(arch), config, loss_fn=arch.loss)
    lrs = [g["lr"] for g in parameter_groups(model, 1e-2)]
    assert lrs == [1e-2, pytest.approx(2e-2), pytest.approx(2e-4)]


def test_generate_uses_the_adapter() -> None:
    arch = ARCHS["gpt2"]
    model = wrapped(arch)
    prompt = arch.batch["input_ids"][:1, :3]
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
        with model.disable_adapter():
            plain = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
        base = build(arch).generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7) and torch.equal(plain, base)


def test_state_dict_holds_the_adapters_only_and_loads_back() -> None:
    arch = ARCHS["bert"]
    model = wrapped(arch, seed=1)
    state = model.state_dict()
    base_keys = set(build(arch).state_dict())
    assert "deeplora_adapters" in state
    assert not any(k.removeprefix("wrapped.") in base_keys for k in state)
    fresh = wrapped(arch, seed=2)  # same layout, other values
    result = fresh.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    with torch.no_grad():
        torch.testing.assert_close(arch.logits(fresh), arch.logits(model))
    copied = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(arch.logits(copied), arch.logits(model))
    with pytest.raises(ValueError, match=r"holds adapters \['default'\] but this model has \[\]"):
        DeepLoraModel(build(arch)).load_state_dict(state, strict=False)


def test_misuse_is_refused(tmp_path: Path) -> None:
    arch = ARCHS["bert"]
    model = wrapped(arch)
    model.save_pretrained(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no such adapter folder"):
        DeepLoraModel.from_pretrained(build(arch), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither"):
        DeepLoraModel.from_pretrained(build(arch), tmp_path / "empty")
    with pytest.raises(ValueError, match="was saved for another architecture"):
        DeepLoraModel.from_pretrained(build(ARCHS["gpt2"]), tmp_path / "out")
    import transformers

    deeper = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=32, num_labels=3))  # fmt: skip
    with pytest.raises(ValueError, match=r"has \d+ layer\(s\) that the adapter's target_modules "
                       r"match but the adapter does not hold \(e\.g\. 'bert\.encoder\.layer\.2"):
        DeepLoraModel.from_pretrained(deeper, tmp_path / "out")
    meta = json.loads((tmp_path / "out" / META_NAME).read_text())
    meta["format_version"] = 99
    (tmp_path / "out" / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"format_version 99 is not supported .* upgrade"):
        DeepLoraModel.from_pretrained(build(arch), tmp_path / "out")
    with pytest.raises(ValueError, match=r"wraps a torch nn\.Module"):
        DeepLoraModel(model)


# --------------------------------------------------------------------------- Trainer
def _dataset(count: int = 32) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(count):
        ids = torch.randint(1, 64, (7,), generator=gen)
        rows.append({"input_ids": ids, "attention_mask": torch.ones(7, dtype=torch.long),
                     "labels": ids[0] % 3})  # fmt: skip
    return rows


def _trainer(model: DeepLoraModel, out: Path, steps: int) -> object:
    transformers = pytest.importorskip("transformers")
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-2,
        save_steps=2, save_strategy="steps", logging_steps=1, report_to=[], seed=0,
        use_cpu=True, dataloader_num_workers=0)  # fmt: skip
    return transformers.Trainer(model=model, args=args, train_dataset=_dataset())


def test_trainer_checkpoints_hold_the_adapter_and_resume_exactly(tmp_path: Path) -> None:
    arch = ARCHS["bert"]
    straight = wrapped(arch)
    _trainer(straight, tmp_path / "a", 4).train()  # type: ignore[attr-defined]
    checkpoint = tmp_path / "a" / "checkpoint-2"
    saved = load_file(checkpoint / "model.safetensors")
    assert saved and not any("word_embeddings" in k or "query.base_layer" in k for k in saved)
    assert "deeplora_adapters" in saved
    resumed = wrapped(arch)
    trainer = _trainer(resumed, tmp_path / "b", 4)
    trainer.train(resume_from_checkpoint=str(checkpoint))  # type: ignore[attr-defined]
    for (name, p), (_, q) in zip(straight.state_dict().items(), resumed.state_dict().items(),
                                 strict=True):  # fmt: skip
        torch.testing.assert_close(q, p, msg=name)
    assert trainer.label_names == ["labels"]  # type: ignore[attr-defined]  # from forward
    assert "eval_loss" in trainer.evaluate(_dataset(8))  # type: ignore[attr-defined]
    trainer.save_model(str(tmp_path / "final"))  # type: ignore[attr-defined]
    loaded = DeepLoraModel.from_pretrained(build(arch), tmp_path / "final")
    resumed.eval()  # Trainer leaves it training (dropout)
    with torch.no_grad():
        torch.testing.assert_close(arch.logits(loaded), arch.logits(resumed))


def test_trl_sft_trainer_trains_a_deep_lora_model(tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "[EOS]", *(f"w{i}" for i in range(40))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    config = transformers.GPT2Config(vocab_size=len(words), n_embd=32, n_layer=2, n_head=2,
                                     n_positions=32, bos_token_id=2, eos_token_id=2,
                                     pad_token_id=0)  # fmt: skip

    def base() -> torch.nn.Module:
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(config).eval()

    model = DeepLoraModel(base(), DeepLoraConfig(rank=4, target_modules="all-linear"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = datasets.Dataset.from_list([
        {"prompt": f"w{i % 10} w{(i + 1) % 10}", "completion": f" w{(i + 2) % 10}"}
        for i in range(32)])  # fmt: skip
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=3,
                         per_device_train_batch_size=8, learning_rate=1e-2, report_to=[],
                         use_cpu=True, save_steps=3, logging_steps=1)  # fmt: skip
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=data,
                             processing_class=tokenizer)  # fmt: skip
    trainer.train()
    after = model.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in after if k.endswith("factors.0"))
    saved = load_file(tmp_path / "sft" / "checkpoint-3" / "model.safetensors")
    assert "deeplora_adapters" in saved and not any("wte" in k or "wpe" in k for k in saved)
    trainer.save_model(str(tmp_path / "final"))
    loaded = DeepLoraModel.from_pretrained(base(), tmp_path / "final")
    model.eval()
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():  # model.forward is still the trainer's (bf16 autocast): the base's
        torch.testing.assert_close(loaded(ids).logits, model.get_base_model()(ids).logits)
