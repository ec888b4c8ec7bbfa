"""Wrapping tiny BERT, GPT-2, Llama and T5 models: init, merge, training, several adapters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deeplora.adapters import (
    DeepLoraConfig,
    DeepLoraLayer,
    TrainedModule,
    active_adapters,
    adapter_configs,
    adapter_layers,
    adapters_disabled,
    count_parameters,
    delete_adapter,
    find_targets,
    merge,
    merge_and_unload,
    parameter_groups,
    set_adapter,
    trainable_parameters,
    unload,
    unmerge,
    wrap,
)

from .conftest import ARCHS, Arch, build, perturb

DTYPES = [torch.float32, torch.bfloat16]


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"atol": 1e-5, "rtol": 0.0} if dtype == torch.float32 else {"atol": 0.02, "rtol": 0.02}


# ----------------------------------------------------------------------------- targets


EXPECTED_QV = {
    "bert": {"query", "value"},
    "gpt2": {"c_attn"},
    "llama": {"q_proj", "v_proj"},
    "t5": {"q", "v"},
}
EXPECTED_AM = {
    "bert": {"query", "key", "value", "dense"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "t5": {"q", "k", "v", "o", "wi", "wo"},
}


def test_presets_work_across_architectures(arch: Arch) -> None:
    model = build(arch)
    qv = find_targets(model, DeepLoraConfig(target_modules="query-value"))
    assert {p.rsplit(".", 1)[-1] for p in qv} == EXPECTED_QV[arch.name]
    am = find_targets(model, DeepLoraConfig(target_modules="attention-mlp"))
    assert {p.rsplit(".", 1)[-1] for p in am} == EXPECTED_AM[arch.name]
    assert not any("pooler" in p or "classifier" in p or "lm_head" in p for p in am)
    every = find_targets(model, DeepLoraConfig(target_modules="all-linear"))
    assert set(am) <= set(every) and "lm_head" not in every


def test_all_dense_keeps_layers_with_both_dimensions_large() -> None:
    model = build(ARCHS["llama"])
    found = find_targets(model, DeepLoraConfig(target_modules="all-dense", min_dense_dim=32))
    # k_proj and v_proj map 32 -> 16
    assert {p.rsplit(".", 1)[-1] for p in found} == {"q_proj", "o_proj", "gate_proj", "up_proj"} | {
        "down_proj"
    }
    with pytest.raises(ValueError, match=r"min_dense_dim=512.*q_proj \(32->32\)"):
        find_targets(model, DeepLoraConfig(target_modules="all-dense"))


def test_regex_names_and_exclusions() -> None:
    model = build(ARCHS["bert"])
    found = find_targets(
        model, DeepLoraConfig(target_modules=r".*layer\.0\..*(query|key)", exclude_modules=["key"])
    )
    assert found == ["bert.encoder.layer.0.attention.self.query"]
    exact = find_targets(model, DeepLoraConfig(target_modules=["layer.1.attention.self.value"]))
    assert exact == ["bert.encoder.layer.1.attention.self.value"]


def test_a_pattern_that_matches_nothing_lists_the_modules() -> None:
    model = build(ARCHS["gpt2"])
    with pytest.raises(ValueError, match=r"matches no module.*transformer\.h\.\*\.attn\.c_attn"):
        wrap(model, DeepLoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"matched no nn.Linear/Conv1D.*mlp\.c_fc \(32->128\)"):
        wrap(model, DeepLoraConfig(target_modules=r"nothing.*"))
    with pytest.raises(
        ValueError, match=r"transformer.wte \(Embedding\), which Deep LoRA cannot adapt"
    ):
        wrap(model, DeepLoraConfig(target_modules=["wte"]))
    assert not adapter_layers(model)  # nothing was changed


def test_a_rank_larger_than_a_layer_is_refused_with_its_name() -> None:
    model = build(ARCHS["llama"])
    expected = r"rank 20 .*'model\.layers\.0\.self_attn\.k_proj', a 32 -> 16 map.* = 16;"
    with pytest.raises(ValueError, match=expected):
        wrap(model, DeepLoraConfig(rank=20, target_modules="attention-mlp"))
    assert not adapter_layers(model)


def test_a_module_both_targeted_and_trained_is_refused() -> None:
    with pytest.raises(ValueError, match="both a target and in modules_to_train"):
        wrap(
            build(ARCHS["bert"]),
            DeepLoraConfig(target_modules=["classifier"], modules_to_train=["classifier"]),
        )


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_at_init_the_outputs_are_the_base_models(arch: Arch, dtype: torch.dtype) -> None:
    base = build(arch, dtype=dtype)
    model = wrap(copy.deepcopy(base), DeepLoraConfig.paper(target_modules="attention-mlp"))
    with torch.no_grad():
        expected, got = arch.logits(base), arch.logits(model)
    assert got.dtype == dtype
    # at the paper's eps, dW(0) has norm ~eps^3 = 1e-9: below float32 resolution of the logits
    torch.testing.assert_close(got, expected, atol=1e-6 if dtype == torch.float32 else 0.0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_merge_unmerge_and_unload_keep_the_outputs(arch: Arch, dtype: torch.dtype) -> None:
    base = build(arch, dtype=dtype)
    model = wrap(
        copy.deepcopy(base),
        DeepLoraConfig(target_modules="attention-mlp", modules_to_train=arch.head),
    )
    perturb(model, scale=0.6)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(arch.logits(unload(fresh)), arch.logits(base), atol=0, rtol=0)
        before = arch.logits(model)
        assert (before.float() - arch.logits(base).float()).abs().max() > 0.05  # not a no-op
        merge(model)
        merged = arch.logits(model)
        with adapters_disabled(model):  # merged adapters are subtracted again
            torch.testing.assert_close(arch.logits(model), arch.logits(base), **_tol(dtype))
        unmerge(model)
        unmerged = arch.logits(model)
        plain = merge_and_unload(copy.deepcopy(model))
        assert not any(isinstance(m, DeepLoraLayer | TrainedModule) for m in plain.modules())
        torch.testing.assert_close(merged, before, **_tol(dtype))
        torch.testing.assert_close(unmerged, before, **_tol(dtype))
        torch.testing.assert_close(arch.logits(plain), before, **_tol(dtype))
    if dtype == torch.float32:  # unmerge restores the base weights up to rounding
        for (name, p), q in zip(unload(model).named_parameters(), base.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def test_layer_works_in_float16_and_under_autocast() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 24)
    for dtype in (torch.float16, torch.bfloat16):
        layer = nn.Sequential(nn.Linear(24, 16)).to(dtype)
        wrap(layer, DeepLoraConfig(rank=4, target_modules=["0"]))
        perturb(layer)
        y = layer(x.to(dtype))
        assert y.dtype == dtype
        reference = nn.functional.linear(
            x.double(),
            layer[0].weight.double() + layer[0].branch("default").delta_weight().double(),
            layer[0].bias.double(),
        )
        torch.testing.assert_close(y.double(), reference, atol=0.05, rtol=0.02)
    layer = nn.Sequential(nn.Linear(24, 16))
    wrap(layer, DeepLoraConfig(rank=4, target_modules=["0"]))
    perturb(layer)
    plain = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), plain, atol=0.05, rtol=0.02)
    y.float().sum().backward()
    grads = [p.grad for _, p in trainable_parameters(layer)]
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_few_steps_change_only_the_adapter_and_the_trained_modules(
    arch: Arch, dtype: torch.dtype
) -> None:
    base = build(arch, dtype=dtype)
    model = wrap(
        copy.deepcopy(base),
        DeepLoraConfig(target_modules="attention-mlp", modules_to_train=arch.head, init_scale=0.3),
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, _ in trainable_parameters(model)}
    assert trainable and all(
        ".adapters.default." in n or ".copies.default." in n for n in trainable
    )
    optimizer = torch.optim.AdamW(parameter_groups(model, lr=1e-2), eps=1e-6)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        arch.loss(model).backward()
        optimizer.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (name in trainable), name
    assert len(trainable) == 3 * len(adapter_layers(model)) + 2 * len(arch.head)
    count = count_parameters(model)
    assert count.trainable == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert "trainable parameters" in str(count) and 0 < count.fraction < 1


def test_parameter_groups_scale_compressed_adapters_by_rank_and_gamma() -> None:
    arch = ARCHS["bert"]
    model = wrap(
        build(arch),
        DeepLoraConfig(init="compressed", rank=4, gamma=0.1, modules_to_train=["classifier"]),
        loss_fn=arch.loss,
    )
    groups = parameter_groups(model, lr=1e-2, weight_decay=0.5)
    # the head at lr; rank 4: the inner factors at lr * 8 / 4, the outer at gamma times that
    assert [g["lr"] for g in groups] == [1e-2, pytest.approx(2e-2), pytest.approx(2e-3)]
    assert all(g["weight_decay"] == 0.5 for g in groups)
    n_layers = len(adapter_layers(model))
    assert len(groups[0]["params"]) == 2  # the head's weight and bias
    assert len(groups[1]["params"]) == 3 * n_layers  # the inner factors
    assert len(groups[2]["params"]) == 2 * n_layers  # left and right of every layer
    paper = parameter_groups(model, lr=1e-2, lr_rank=None)  # the paper's: inner factors at lr
    assert [g["lr"] for g in paper] == [1e-2, pytest.approx(1e-2), pytest.approx(1e-3)]


# ----------------------------------------------------------------------------- several adapters


def test_several_adapters_switch_disable_and_delete() -> None:
    arch = ARCHS["bert"]
    base = build(arch)
    model = copy.deepcopy(base)
    wrap(model, DeepLoraConfig(modules_to_train=["classifier"]), adapter_name="a")
    perturb(model, "a", seed=1)
    with torch.no_grad():
        out_a = arch.logits(model)
    wrap(model, DeepLoraConfig(target_modules="attention-mlp", rank=2), adapter_name="b")
    perturb(model, "b", seed=2)
    assert active_adapters(model) == ("b",)
    assert all(".adapters.b." in n for n, _ in trainable_parameters(model))
    with torch.no_grad():
        out_b = arch.logits(model)
        set_adapter(model, "a")
        torch.testing.assert_close(arch.logits(model), out_a)
        merge(model)  # merge a, then switch to b: a is subtracted again
        set_adapter(model, "b")
        torch.testing.assert_close(arch.logits(model), out_b, atol=1e-5, rtol=0)
        set_adapter(model, ["a", "b"])
        both = arch.logits(model)
        assert (both - out_a).abs().max() > 1e-3 and (both - out_b).abs().max() > 1e-3
        with adapters_disabled(model):
            torch.testing.assert_close(arch.logits(model), arch.logits(base), atol=1e-5, rtol=0)
        torch.testing.assert_close(arch.logits(model), both)
        delete_adapter(model, "a")
        assert active_adapters(model) == ("b",)
        torch.testing.assert_close(arch.logits(model), out_b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"no adapter named 'a'.*\['b'\]"):
        set_adapter(model, "a")
    with pytest.raises(ValueError, match="already has an adapter named 'b'"):
        wrap(model, DeepLoraConfig(), adapter_name="b")


def test_merging_into_a_tied_weight_is_refused() -> None:
    arch = ARCHS["gpt2"]  # lm_head shares its weight with the token embedding
    model = wrap(build(arch), DeepLoraConfig(target_modules=["lm_head"]))
    with pytest.raises(ValueError, match=r"'lm_head' is shared with another module"):
        merge(model)
    assert not adapter_layers(model)["lm_head"].merged


def test_unloading_restores_the_base_models_requires_grad() -> None:
    base = build(ARCHS["bert"])
    base.bert.embeddings.requires_grad_(False)  # frozen by the user before wrapping
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    model = wrap(copy.deepcopy(base), DeepLoraConfig(modules_to_train=["classifier"]))
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    for plain in (merge_and_unload(copy.deepcopy(model)), unload(copy.deepcopy(model))):
        assert {n: p.requires_grad for n, p in plain.named_parameters()} == flags
        assert not adapter_configs(plain) and not active_adapters(plain)
