"""Saving, loading and PEFT export of Deep LoRA adapters, and the errors on bad files."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch

from deeplora.adapters import (
    DeepLoraConfig,
    adapter_configs,
    export_peft,
    load_adapter,
    merge_and_unload,
    save_adapter,
    trainable_parameters,
    truncate,
    wrap,
)
from deeplora.adapters.io import META_NAME, WEIGHTS_NAME

from .conftest import ARCHS, Arch, build, perturb

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _trained(
    arch: Arch, init: str = "orthogonal", dtype: torch.dtype = torch.float32, **kwargs
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A base model and a wrapped copy with a non-trivial adapter."""
    base = build(arch, dtype=dtype)
    config = DeepLoraConfig(
        target_modules="attention-mlp", modules_to_train=arch.head, init=init, rank=4, **kwargs
    )
    loss_fn = arch.loss if init == "compressed" else None
    model = wrap(copy.deepcopy(base), config, loss_fn=loss_fn)
    perturb(model, scale=0.6)
    return base, model


@pytest.mark.parametrize(
    ("init", "dtype"),
    [("orthogonal", torch.float32), ("compressed", torch.float32), ("compressed", torch.bfloat16)],
    ids=["orthogonal", "compressed", "compressed-bf16"],
)
def test_save_then_load_in_a_fresh_model_gives_identical_outputs(
    arch: Arch, init: str, dtype: torch.dtype, tmp_path: Path
) -> None:
    base, model = _trained(arch, init=init, dtype=dtype, dropout=0.1)
    save_adapter(model, tmp_path / "adapter")
    fresh = build(arch, seed=123, dtype=dtype)  # another seed: other weights, then the base's
    fresh.load_state_dict(base.state_dict())
    wrap(fresh, DeepLoraConfig(rank=2), adapter_name="other")  # a second adapter is no obstacle
    load_adapter(fresh, tmp_path / "adapter", adapter_name="loaded")
    assert adapter_configs(fresh)["loaded"] == adapter_configs(model)["default"]
    assert not trainable_parameters(fresh)  # loaded for inference
    with torch.no_grad():
        torch.testing.assert_close(arch.logits(fresh), arch.logits(model), atol=0, rtol=0)
    again = load_adapter(copy.deepcopy(base), tmp_path / "adapter", trainable=True)
    assert {n.split(".adapters.")[-1] for n, _ in trainable_parameters(again) if ".adapters." in n}


def test_the_peft_export_loads_in_peft_with_the_same_logits(arch: Arch, tmp_path: Path) -> None:
    base, model = _trained(arch)
    report = export_peft(model, tmp_path / "peft")
    assert all(r.rank == 4 and r.error < 1e-6 for r in report.values())  # lossless
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"] == (arch.name == "gpt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft"))
    merged = merge_and_unload(model)
    with torch.no_grad():
        torch.testing.assert_close(arch.logits(loaded), arch.logits(merged), atol=1e-5, rtol=0)


def test_a_truncated_export_reports_its_error_and_matches_truncation(tmp_path: Path) -> None:
    arch = ARCHS["llama"]
    base, model = _trained(arch, init="compressed")
    report = export_peft(model, tmp_path / "peft", rank=2)
    assert all(r.rank == 2 and r.full_rank == 4 and 0 < r.error < 1 for r in report.values())
    by_energy = export_peft(model, tmp_path / "energy", energy=0.9)
    assert all(1 <= r.rank <= 4 and r.error**2 <= 0.1 + 1e-9 for r in by_energy.values())
    config = json.loads((tmp_path / "energy" / "adapter_config.json").read_text())
    assert config["r"] == max(r.rank for r in by_energy.values())
    assert len({r.rank for r in by_energy.values()}) > 1  # per-layer ranks via rank_pattern
    cut_by_energy = copy.deepcopy(model)
    truncate(cut_by_energy, energy=0.9)
    cut = truncate(model, rank=2)
    assert {k: v.error for k, v in cut.items()} == pytest.approx(
        {k: v.error for k, v in report.items()}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft"))
        by_energy_loaded = peft.PeftModel.from_pretrained(
            copy.deepcopy(base), str(tmp_path / "energy")
        )
    with torch.no_grad():
        torch.testing.assert_close(arch.logits(loaded), arch.logits(model), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            arch.logits(by_energy_loaded), arch.logits(cut_by_energy), atol=1e-5, rtol=0
        )


# ----------------------------------------------------------------------------- bad input


def test_loading_onto_other_shapes_names_the_layer_and_both_shapes(tmp_path: Path) -> None:
    _, model = _trained(ARCHS["llama"])
    save_adapter(model, tmp_path / "a")
    other = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    wider = transformers.LlamaForCausalLM(other)
    with pytest.raises(
        ValueError,
        match=r"layer 'model\.layers\.0\.mlp\.gate_proj' has weight shape \(d_out, d_in\) = "
        r"\(48, 32\) in the adapter but \(40, 32\) in this model",
    ):
        load_adapter(wider, tmp_path / "a")
    assert not adapter_configs(wider)  # nothing changed
    with pytest.raises(ValueError, match=r"layer 'model\.layers\.0.*does not exist"):
        load_adapter(build(ARCHS["gpt2"]), tmp_path / "a")


def test_missing_and_corrupt_files_get_clear_errors(tmp_path: Path) -> None:
    arch = ARCHS["bert"]
    base, model = _trained(arch)
    good = save_adapter(model, tmp_path / "good")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adapter(copy.deepcopy(base), tmp_path / "nowhere")

    def broken(name: str, edit) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for f in (META_NAME, WEIGHTS_NAME):
            (folder / f).write_bytes((good / f).read_bytes())
        edit(folder)
        return folder

    cases = {
        "not a readable safetensors": lambda f: (f / WEIGHTS_NAME).write_bytes(b"\x00garbage"),
        "not valid JSON": lambda f: (f / META_NAME).write_text("{oops"),
        "expected a 'deeplora-adapter' file": lambda f: (f / META_NAME).write_text('{"kind": 1}'),
    }
    for message, edit in cases.items():
        with pytest.raises(ValueError, match=message):
            load_adapter(copy.deepcopy(base), broken(message.split()[-1].strip("'"), edit))
    meta = json.loads((good / META_NAME).read_text())
    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        load_adapter(
            copy.deepcopy(base),
            broken("newer", lambda f: (f / META_NAME).write_text(
                json.dumps({**meta, "format_version": 99})
            )),
        )  # fmt: skip
    (good / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_adapter(copy.deepcopy(base), good)


def test_a_missing_tensor_is_reported(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    arch = ARCHS["bert"]
    base, model = _trained(arch)
    folder = save_adapter(model, tmp_path / "a")
    tensors = load_file(str(folder / WEIGHTS_NAME))
    key = sorted(tensors)[0]
    del tensors[key]
    save_file(tensors, str(folder / WEIGHTS_NAME))
    with pytest.raises(ValueError, match=f"tensor '{key}' is missing.*corrupt"):
        load_adapter(copy.deepcopy(base), folder)


def test_saving_or_loading_an_unknown_adapter_name_fails(tmp_path: Path) -> None:
    _, model = _trained(ARCHS["bert"])
    with pytest.raises(ValueError, match="no adapter named 'x'"):
        save_adapter(model, tmp_path, adapter_name="x")
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        load_adapter(model, save_adapter(model, tmp_path / "a"))
