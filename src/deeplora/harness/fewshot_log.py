"""The few-shot study's run log: one JSON line per finished run, after a header with the
settings, so that ``--resume`` continues a killed benchmark (:mod:`deeplora.harness.fewshot`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._io import atomic_open
from ..errors import UserError
from .fewshot import (
    DEEP,
    FORMAT_VERSION,
    LABELS,
    RUN_SETTINGS,
    RUNS_KIND,
    Job,
    Settings,
    finetune_config,
    job_of,
    record_key,
)


class RunLog:
    """Finished runs, one JSON line each after a header line with the settings."""

    def __init__(self, path: Path | None, settings: Settings, *, resume: bool, overwrite: bool):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path is None:
            if resume:
                raise UserError("--resume needs the run log: give --runs PATH (or --json PATH)")
            return
        if resume and overwrite:
            raise UserError("--resume continues a benchmark and --overwrite starts it again: "
                             "choose one")  # fmt: skip
        mine = {k: v for k, v in settings.to_dict().items() if k in RUN_SETTINGS}
        if path.exists() and path.stat().st_size and not (resume or overwrite):
            raise UserError(f"{path} holds runs of an earlier benchmark; pass --resume to "
                             "continue it or --overwrite to start again")  # fmt: skip
        if resume and path.exists() and path.stat().st_size:
            lines = path.read_text(encoding="utf-8").splitlines()
            header = _parse(lines[0])
            if not header or header.get("kind") != RUNS_KIND:
                raise UserError(f"{path} is not a fewshot benchmark run log")
            if header.get("format_version") != FORMAT_VERSION:
                raise UserError(f"{path} was written by another version of the benchmark "
                                 f"(format {header.get('format_version')}, this one reads "
                                 f"{FORMAT_VERSION}); pass --overwrite to start again")  # fmt: skip
            saved = {k: v for k, v in header["settings"].items() if k in RUN_SETTINGS}
            changed = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            if changed:
                raise UserError(f"{path} was written with other settings ({', '.join(changed)});"
                                 " resume with the same ones or --overwrite")  # fmt: skip
            for line in lines[1:]:
                record = _parse(line)
                if record is not None:  # a line torn by a kill is skipped (run again)
                    self.records[record_key(record)] = record
            _check_records(path, self.records.values(), settings)
            with atomic_open(path) as f:  # without the torn line, so appends start clean
                f.write("\n".join([lines[0], *map(json.dumps, self.records.values())]) + "\n")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"kind": RUNS_KIND, "format_version": FORMAT_VERSION,
                  "settings": settings.to_dict()}  # fmt: skip
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, record: dict[str, Any]) -> None:
        self.records[record_key(record)] = record
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def missing(self, jobs: Iterable[Job]) -> list[Job]:
        return [j for j in jobs if j.key not in self.records]


def _check_records(path: Path, records: Iterable[dict[str, Any]], settings: Settings) -> None:
    """The logged runs were made at the head lr and (Deep LoRA's) eps these settings give (a
    library version with other defaults made others): they cannot be mixed with new runs."""
    for r in records:
        config = finetune_config(settings, job_of(r))
        if r.get("head_lr") != config.head_learning_rate:
            raise UserError(f"{path} holds runs with the head at lr {r.get('head_lr')}, not "
                             f"this benchmark's {config.head_learning_rate:g}: pass --overwrite "
                             "to start again")  # fmt: skip
        if r.get("method") in DEEP and r.get("init_scale") != config.factor_scale:
            raise UserError(f"{path} holds {LABELS[r['method']]} runs at eps "
                             f"{r.get('init_scale')}, not this benchmark's "
                             f"{config.factor_scale:g}: pass --overwrite to start "
                             "again")  # fmt: skip


def _parse(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
