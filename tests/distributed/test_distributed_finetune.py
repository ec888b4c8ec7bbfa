"""``finetune`` on two gloo processes with DistributedDataParallel: the one-process result,
outputs written once, a lost rank ending the job with an error, and resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # spawned children import workers

pytest.importorskip("transformers")

from deeplora.finetune import FinetuneConfig, finetune
from tests.distributed import workers
from tests.finetune.conftest import reviews, save_model

ADAPTER = "adapter/deeplora_adapter.safetensors"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT without dropout, so that one and two processes compute the same."""
    folder = save_model("bert", tmp_path_factory.mktemp("ddp") / "bert")
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def launch(model: Path, out: Path, kill_at: int | None = None, resume: bool = False) -> list:
    return workers.launch(workers.finetune_rank, 2, str(model), str(out), kill_at, resume)


def test_two_ranks_match_one_process_and_resume_after_a_lost_rank(model: Path,
                                                                  tmp_path: Path) -> None:
    cfg = FinetuneConfig(model=str(model), **workers.FINETUNE)  # type: ignore[arg-type]
    one = finetune(reviews(40), cfg, evaluation=reviews(16, seed=1), out=tmp_path / "one")

    assert launch(model, tmp_path / "two") == [0, 0]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["processes"] == 2 and two["steps"] == 6 and two["batch_size"] == 8
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())  # one writer, nothing left over
    for key in ("loss", "accuracy"):
        assert two["eval"][key] == pytest.approx(one.metrics["eval"][key], abs=1e-5)
    assert two["history"]["loss"] == pytest.approx(one.metrics["history"]["loss"], abs=1e-5)
    a, b = load_file(tmp_path / "one" / ADAPTER), load_file(tmp_path / "two" / ADAPTER)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    out = tmp_path / "killed"
    codes = launch(model, out, kill_at=3)
    assert codes == [0, 3]  # rank 0 stopped with an error instead of hanging
    message = (tmp_path / "killed.rank0.txt").read_text()
    assert "another rank died or stopped answering" in message and "--resume" in message
    assert not (out / "metrics.json").exists()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2

    assert launch(model, out, resume=True) == [0, 0]
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["eval"] == two["eval"] and resumed["history"] == two["history"]
    c = load_file(out / ADAPTER)
    assert all(torch.equal(b[k], c[k]) for k in b)
