"""Deep LoRA adapters for any PyTorch / Hugging Face model (docs/METHOD.md 4).

``dW = W_L ... W_2 W_1`` (depth 3, width 8, every factor ``eps = 3e-2`` times a
semi-orthogonal matrix, no alpha) added to frozen ``nn.Linear`` / ``Conv1D`` layers::

    from deeplora.adapters import (DEFAULT_LR, DeepLoraConfig, export_peft, parameter_groups,
                                   save_adapter, wrap)

    config = DeepLoraConfig(target_modules="query-value", modules_to_train=["classifier"])
    model = wrap(model, config)
    optimizer = torch.optim.AdamW(parameter_groups(model, lr=DEFAULT_LR), betas=(0.9, 0.999),
                                  eps=1e-6)
    ...
    save_adapter(model, "out/adapter")
    export_peft(model, "out/peft")  # a standard PEFT LoRA adapter, by exact SVD of each dW

``DeepLoraConfig.paper()`` is the paper's eps 1e-3, to train at ``PAPER_LR`` (1e-4).
``init="compressed"`` (rank even) also needs ``loss_fn=lambda m: loss on one batch`` in
:func:`wrap`; through :func:`parameter_groups` it trains at ``lr * 8 / rank`` (outer factors
at ``gamma`` times that).
"""

from .config import (
    COMPRESSED_LR_RANK,
    DEFAULT_COMPRESSED_LR,
    DEFAULT_INIT_SCALE,
    DEFAULT_LR,
    PAPER_INIT_SCALE,
    PAPER_LR,
    PRESETS,
    DeepLoraConfig,
)
from .init import compressed_branch, compressed_branches
from .io import export_peft, load_adapter, save_adapter
from .layer import DeepLoraBranch, DeepLoraLayer, TrainedModule, adapters_disabled
from .model import (
    ParameterCount,
    active_adapters,
    adapter_branches,
    adapter_configs,
    adapter_layers,
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
from .pretrained import DeepLoraModel
from .rank import LayerTruncation, effective_ranks, singular_values, truncate

__all__ = [
    "COMPRESSED_LR_RANK",
    "DEFAULT_COMPRESSED_LR",
    "DEFAULT_INIT_SCALE",
    "DEFAULT_LR",
    "PAPER_INIT_SCALE",
    "PAPER_LR",
    "PRESETS",
    "DeepLoraBranch",
    "DeepLoraConfig",
    "DeepLoraLayer",
    "DeepLoraModel",
    "LayerTruncation",
    "ParameterCount",
    "TrainedModule",
    "active_adapters",
    "adapter_branches",
    "adapter_configs",
    "adapter_layers",
    "adapters_disabled",
    "compressed_branch",
    "compressed_branches",
    "count_parameters",
    "delete_adapter",
    "effective_ranks",
    "export_peft",
    "find_targets",
    "load_adapter",
    "merge",
    "merge_and_unload",
    "parameter_groups",
    "save_adapter",
    "set_adapter",
    "singular_values",
    "trainable_parameters",
    "truncate",
    "unload",
    "unmerge",
    "wrap",
]
