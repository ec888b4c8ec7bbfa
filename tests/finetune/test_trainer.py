"""The data order and the checkpoint files (resume end to end is in test_run.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deeplora.finetune import FinetuneConfig, batch_indices, finetune

from .conftest import reviews


def test_every_epoch_visits_every_example_once() -> None:
    count, batch = 10, 4
    stream = np.concatenate([batch_indices(count, batch, s, seed=0) for s in range(10)])
    for epoch in range(4):
        assert sorted(stream[epoch * count : (epoch + 1) * count].tolist()) == list(range(count))
    assert stream[:count].tolist() != stream[count : 2 * count].tolist()  # reshuffled
    again = np.concatenate([batch_indices(count, batch, s, seed=0) for s in range(10)])
    assert np.array_equal(stream, again)
    assert not np.array_equal(stream, np.concatenate(
        [batch_indices(count, batch, s, seed=1) for s in range(10)]))  # fmt: skip


def test_checkpoint_files(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o"
    config = FinetuneConfig(model=str(models["bert"]), steps=6, batch_size=8, checkpoint_every=2,
                            max_length=16, progress=False)  # fmt: skip
    written: list[list[str]] = []

    def look(step: int, idx: np.ndarray, loss: float) -> None:
        if step > 2:  # the checkpoint of the step before
            written.append(sorted(p.name for p in (out / "checkpoint").iterdir()))
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(reviews(24), config, evaluation=reviews(8, seed=1), out=out, on_step=look)
    # one tensor file at a time, named by the state
    assert written[-1] == ["state-00000004.safetensors", "state.json"]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["tensors"] == "state-00000004.safetensors" and state["step"] == 4
    assert len(state["history"]["loss"]) == 4
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint"]  # no output yet
