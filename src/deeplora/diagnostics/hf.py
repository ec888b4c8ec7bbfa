"""A Hugging Face ``Trainer`` callback that runs a :class:`~deeplora.diagnostics.SubspaceRecorder`.

::

    from deeplora.diagnostics.hf import RecorderCallback

    callback = RecorderCallback(k=8, every=10)  # SubspaceRecorder.from_model at train begin
    trainer = transformers.Trainer(model=model, ..., callbacks=[callback])
    trainer.train()
    callback.recording.save("out/subspaces.npz")

transformers is imported only with this module (``deeplora.diagnostics`` itself works without
it); without transformers, building the callback raises ``ImportError``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import UserError
from .recorder import Recording, SubspaceRecorder

if TYPE_CHECKING:
    from transformers import TrainerCallback as _Base
else:
    try:
        from transformers import TrainerCallback as _Base
    except ImportError:  # the package works without transformers; the callback does not
        _Base = object

__all__ = ["RecorderCallback"]


class RecorderCallback(_Base):
    """Record adapter spectra and subspaces during ``transformers.Trainer.train``.

    ``RecorderCallback(recorder)`` uses a recorder you built; ``RecorderCallback(**kw)`` builds
    ``SubspaceRecorder.from_model(model, **kw)`` at ``on_train_begin`` (Deep LoRA or PEFT LoRA
    adapters; ``adapter_name`` is accepted among ``kw``). The step is ``state.global_step``
    (optimizer steps): the start state at train begin and every scheduled step after
    ``on_step_end``; at ``on_train_end`` the final step is recorded too if it was not (so
    ``reference="final"`` means the trained model) and ``.recording`` holds the result, also
    written to ``save_path`` (``.npz`` or ``.json``) when given.
    """

    def __init__(
        self,
        recorder: SubspaceRecorder | None = None,
        *,
        save_path: str | os.PathLike[str] | None = None,
        **recorder_kw: Any,
    ) -> None:
        if _Base is object:
            raise ImportError(
                "RecorderCallback needs transformers: pip install 'deeplora[hf]' "
                "(or drive a SubspaceRecorder from your own loop)"
            )
        if recorder is not None and recorder_kw:
            raise UserError(
                f"give a recorder or recorder settings, not both (got {sorted(recorder_kw)})"
            )
        if recorder is not None and not isinstance(recorder, SubspaceRecorder):
            raise UserError(
                f"recorder must be a SubspaceRecorder, got {type(recorder).__name__}"
            )
        self.recorder = recorder
        self.recorder_kw = recorder_kw
        self.save_path = save_path
        self.recording: Recording | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any,
                       model: nn.Module | None = None, **kwargs: Any) -> None:
        if self.recorder is None:
            if model is None:
                raise UserError("RecorderCallback: the Trainer passed no model to build the "
                                 "recorder from; pass a SubspaceRecorder instead")
            self.recorder = SubspaceRecorder.from_model(model, **self.recorder_kw)
        self.recording = None
        self.recorder.maybe_record(int(state.global_step))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder is not None:
            self.recorder.maybe_record(int(state.global_step))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder is None:
            return
        step = int(state.global_step)
        steps = self.recorder.recorded_steps
        if not steps or steps[-1] < step:
            self.recorder.record(step)
        self.recording = self.recorder.finish()
        if self.save_path is not None and getattr(state, "is_world_process_zero", True):
            self.recording.save(self.save_path)
