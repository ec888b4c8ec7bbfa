"""Configuration of a Deep LoRA adapter, with the measured defaults (docs/METHOD.md 4.3).

Deep LoRA adds ``dW = W_L ... W_2 W_1`` to a frozen weight ``W0`` (``L = depth``, width
``k = rank``), each factor ``eps`` times a random semi-orthogonal matrix at init, with no
alpha/r scaling. ``init="compressed"`` replaces the factors by
``left (d_out x k) @ Wt_L ... Wt_1 (k x k, eps I at init) @ right^T (k x d_in)``, read off one
batch's gradient (docs/METHOD.md 3.1 and 4); ``left``/``right`` then train at ``gamma * lr``.

Which modules are adapted (``target_modules``):

- a list of names: a module matches a name when its full path equals it or ends with
  ``"." + name`` (``"query"`` matches ``bert.encoder.layer.0.attention.self.query``);
- ``"all-linear"``: every ``nn.Linear`` and Hugging Face ``Conv1D`` but the output layer
  (``lm_head``, tied to the input embedding in many models);
- a preset: ``"query-value"``, ``"attention-mlp"`` or ``"all-dense"`` (every linear layer but
  the output layer with both dimensions >= ``min_dense_dim``, 512 in the paper), with names
  that cover BERT, GPT-2, Llama and T5 (and DistilBERT, BART/OPT);
- any other string: a regular expression that must match a module's full path
  (``re.fullmatch``).

Only ``nn.Linear`` and ``Conv1D`` modules are adapted; modules in ``modules_to_train`` are
trained fully instead (one copy per adapter, saved with it).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ..errors import UserError

InitKind = Literal["orthogonal", "compressed", "wide"]
FactorInit = Literal["orthogonal", "identity"]

INITS: tuple[str, ...] = ("orthogonal", "compressed", "wide")
FACTOR_INITS: tuple[str, ...] = ("orthogonal", "identity")

# The defaults (docs/METHOD.md 4.3): eps per init, and the Adam learning rates they go with.
# Orthogonal: 3e-2 at lr 1e-3, chosen together on the few-shot benchmark's validation split
# (docs/BENCHMARKS.md); compressed: the paper's eps 1e-3 at its inner lr 1e-2 (the outer
# factors at gamma * lr); wide (an ablation): the paper's eps.
DEFAULT_INIT_SCALE: dict[str, float] = {"orthogonal": 3e-2, "compressed": 1e-3, "wide": 1e-3}
DEFAULT_LR = 1e-3
DEFAULT_COMPRESSED_LR = 1e-2
# A compressed adapter's lr is the one for rank COMPRESSED_LR_RANK: at rank k its factors train
# at lr * COMPRESSED_LR_RANK / k (docs/METHOD.md 4.2; adapters.model.parameter_groups).
COMPRESSED_LR_RANK = 8
# The paper's setting (docs/METHOD.md 4.1): DeepLoraConfig.paper(), trained at PAPER_LR.
PAPER_INIT_SCALE = 1e-3
PAPER_LR = 1e-4

# Leaf names of the attention query/value projections, by architecture.
_QUERY_VALUE = (
    "query", "value",  # BERT, RoBERTa
    "c_attn", "q_attn",  # GPT-2: one fused q/k/v projection (Conv1D)
    "q_proj", "v_proj",  # Llama, Mistral, BART, OPT
    "q", "v",  # T5
    "q_lin", "v_lin",  # DistilBERT
)  # fmt: skip
# Leaf names (or path tails) of every attention and MLP projection, by architecture.
_ATTENTION_MLP = (
    *_QUERY_VALUE,
    "key", "attention.output.dense", "intermediate.dense", "output.dense",  # BERT
    "c_proj", "c_fc",  # GPT-2
    "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj",  # Llama
    "out_proj", "fc1", "fc2",  # BART, OPT
    "k", "o", "wi", "wo", "wi_0", "wi_1",  # T5
    "k_lin", "out_lin", "lin1", "lin2",  # DistilBERT
)  # fmt: skip

PRESETS: dict[str, tuple[str, ...] | None] = {
    "query-value": _QUERY_VALUE,
    "attention-mlp": _ATTENTION_MLP,
    "all-dense": None,  # every linear layer with both dimensions >= min_dense_dim
}
ALL_LINEAR = "all-linear"


def _check_patterns(value: Any, what: str, allow_none: bool) -> str | list[str] | None:
    """A str (preset or regex) or a non-empty list of non-empty names."""
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        if not value:
            raise UserError(f"{what} is an empty string; give names, a regex or a preset")
        if value not in PRESETS and value != ALL_LINEAR:
            try:
                re.compile(value)
            except re.error as e:
                raise UserError(
                    f"{what}={value!r} is neither a preset ({', '.join(PRESETS)}, "
                    f"{ALL_LINEAR!r}) nor a valid regular expression ({e}); fix the pattern "
                    "or pass a list of module names"
                ) from e
        return value
    if isinstance(value, list | tuple | set | frozenset):
        names = sorted(value) if isinstance(value, set | frozenset) else list(value)
        bad = [n for n in names if not isinstance(n, str) or not n]
        if bad:
            raise UserError(f"{what} must hold non-empty module names, got {bad!r}")
        if not names and not allow_none:
            raise UserError(f"{what} is empty; give at least one module name or a preset")
        return names
    expected = "a string (preset or regex), a list of names"
    raise UserError(
        f"{what} must be {expected}{' or None' if allow_none else ''}, got {type(value).__name__}"
    )


@dataclass
class DeepLoraConfig:
    """Settings of one Deep LoRA adapter, at the measured defaults (docs/METHOD.md 4.3);
    :meth:`paper` gives the paper's."""

    rank: int = 8  # width k of the factors; ignored by init="wide" (width min(d_in, d_out))
    depth: int = 3  # number L of factors in dW = W_L ... W_1 (inner factors if compressed)
    # eps: every factor starts as eps times a semi-orthogonal matrix; None: DEFAULT_INIT_SCALE
    init_scale: float | None = None
    # "orthogonal": narrow (width rank), eps times random semi-orthogonal factors;
    # "compressed": from one batch's gradient (docs/METHOD.md 3.1/4; rank even, r_hat = rank / 2);
    # "wide": width min(d_in, d_out), for ablations.
    init: InitKind = "orthogonal"
    # names, a regex, "all-linear" or a preset (see the module docstring)
    target_modules: str | list[str] = "query-value"
    exclude_modules: str | list[str] | None = None  # same forms; removed from the targets
    dropout: float = 0.0  # dropout on the adapter branch's input
    modules_to_train: list[str] = field(default_factory=list)  # trained fully, e.g. a head
    gamma: float = 1e-2  # learning-rate factor of the outer factors of a compressed adapter
    # factors' semi-orthogonal matrices: random ("orthogonal") or the partial identity
    # ("identity", one valid orthogonal choice; for checks against the compressed init)
    factor_init: FactorInit = "orthogonal"
    min_dense_dim: int = 512  # "all-dense": both dimensions of a layer at least this
    seed: int = 0  # seed of the random factors

    def __post_init__(self) -> None:
        for name in ("rank", "depth", "min_dense_dim", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{name} must be an integer, got {value!r}")
        if self.rank < 1:
            raise UserError(f"rank must be >= 1, got {self.rank}; the paper uses 8")
        if self.depth < 2:
            raise UserError(
                f"depth must be >= 2 (the number of factors of dW), got {self.depth}; "
                "the paper uses 3"
            )
        if self.min_dense_dim < 1:
            raise UserError(f"min_dense_dim must be >= 1, got {self.min_dense_dim}")
        if self.init not in INITS:
            raise UserError(f"init must be one of {INITS}, got {self.init!r}")
        if self.factor_init not in FACTOR_INITS:
            raise UserError(f"factor_init must be one of {FACTOR_INITS}, got {self.factor_init!r}")
        if self.init == "compressed" and self.rank % 2:
            raise UserError(
                f"init='compressed' builds a basis of 2 * r_hat columns, so rank must be even "
                f"(got {self.rank}); use rank={self.rank - 1 or 2} or {self.rank + 1}"
            )
        if self.init_scale is None:
            self.init_scale = DEFAULT_INIT_SCALE[self.init]
        for name, low_open in (("init_scale", True), ("gamma", False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UserError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0 or (low_open and value == 0):
                bound = "> 0" if low_open else ">= 0"
                raise UserError(
                    f"{name} must be finite and {bound}, got {value}; the default is "
                    f"{DEFAULT_INIT_SCALE[self.init] if name == 'init_scale' else 1e-2:g}"
                )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float):
            raise UserError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        targets = _check_patterns(self.target_modules, "target_modules", allow_none=False)
        assert targets is not None
        self.target_modules = targets
        self.exclude_modules = _check_patterns(
            self.exclude_modules, "exclude_modules", allow_none=True
        )
        if isinstance(self.modules_to_train, str):
            raise UserError(
                f"modules_to_train must be a list of module names, got the string "
                f"{self.modules_to_train!r}; write [{self.modules_to_train!r}]"
            )
        trained = _check_patterns(list(self.modules_to_train), "modules_to_train", True)
        self.modules_to_train = list(trained or [])

    @classmethod
    def paper(cls, **settings: Any) -> DeepLoraConfig:
        """The paper's Deep LoRA (docs/METHOD.md 4.1): eps 1e-3, to train at ``PAPER_LR``
        (1e-4) for 200-1000 steps; ``settings`` set the other fields."""
        return cls(**{"init_scale": PAPER_INIT_SCALE, **settings})

    @property
    def eps(self) -> float:
        """The init scale ``eps`` (``init_scale``, resolved)."""
        assert self.init_scale is not None
        return self.init_scale

    @property
    def r_hat(self) -> int:
        """The assumed rank of the compressed init: half the width (docs/METHOD.md 4)."""
        return self.rank // 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeepLoraConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"unknown DeepLoraConfig fields {unknown}; expected some of {sorted(known)} "
                "(a file from a newer deeplora? upgrade it)"
            )
        return cls(**data)
