"""The FSDP recipe of docs/DISTRIBUTED.md: a Deep LoRA model (frozen base, trained factors
and head) sharded with torch's fully_shard trains as one process does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # spawned children import workers

pytest.importorskip("transformers")

from tests.adapters.conftest import ARCHS, build
from tests.distributed import workers


def test_fully_sharded_deep_lora_trains_like_one_process(tmp_path: Path) -> None:
    one = workers.fsdp_training(build(ARCHS["bert"], seed=0), 0, 1, None)
    assert workers.launch(workers.fsdp_rank, 2, str(tmp_path)) == [0, 0]
    two = [float((tmp_path / f"rank{r}.txt").read_text()) for r in range(2)]
    assert two[0] == two[1]
    assert two[0] == pytest.approx(one, abs=1e-5)
