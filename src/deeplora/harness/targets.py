"""A benchmark's targets, declared in one table: each figure with its target, its verdict, and
whether it was measured or estimated. A benchmark prints this table at the end of its run and
saves it in its JSON (``"targets"``); ``deeplora bench targets FILE.json ...`` renders the saved
tables as the Markdown of README.md and docs/BENCHMARKS.md, so that all three come from it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._io import read_json
from ..errors import UserError
from .machine import table


@dataclass(frozen=True)
class Target:
    """One figure against its target: ``value <= limit`` (``at_most``) or ``value >= limit``.
    ``value`` None (or NaN) means not measured in this run, infinity that the run never got
    there; ``estimated`` marks a figure that was computed from parts rather than run to the
    end (e.g. steps x seconds per step)."""

    figure: str
    value: float | None
    limit: float
    at_most: bool = True
    estimated: bool = False
    unit: str = ""
    digits: str = ".3g"

    @property
    def measured(self) -> bool:
        return self.value is not None and not math.isnan(self.value)

    @property
    def verdict(self) -> str:
        if not self.measured:
            return "not measured"
        assert self.value is not None
        ok = self.value <= self.limit if self.at_most else self.value >= self.limit
        return "met" if ok else "missed"

    def cells(self) -> list[str]:
        value = (f"{self.value:{self.digits}}{self.unit}" if self.measured else "-")
        if self.estimated and self.measured:
            value += " (estimate)"
        bound = f"{'<=' if self.at_most else '>='} {self.limit:{self.digits}}{self.unit}"
        return [self.figure, value, bound, self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


HEADER = ["figure", "value", "target", "verdict"]


def print_targets(targets: Sequence[Target]) -> None:
    """The run's targets as one plain-text table (or a line saying that it has none)."""
    print("\n== targets")
    if not targets:
        print("none for this run's settings")
        return
    print(table(HEADER, [t.cells() for t in targets]))


def to_json(targets: Sequence[Target]) -> list[dict[str, Any]]:
    return [t.to_dict() for t in targets]


def from_json(rows: Iterable[dict[str, Any]], where: str) -> list[Target]:
    names = set(Target.__dataclass_fields__)
    try:
        return [Target(**{k: v for k, v in row.items() if k in names}) for row in rows]
    except TypeError as e:
        raise UserError(f"{where}: its targets are not in this library's form ({e})") from None


def markdown(targets: Sequence[Target]) -> str:
    """The targets as a Markdown table (the form README.md and docs/BENCHMARKS.md quote)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(t.cells()) + " |" for t in targets]
    return "\n".join(lines)


def read_targets(paths: Sequence[Path]) -> list[Target]:
    """The targets saved in benchmark JSON files, in the order given."""
    out: list[Target] = []
    for path in paths:
        data = read_json(path, "benchmark results")
        if "targets" not in data:
            raise UserError(f"{path} holds no targets; it was written by a benchmark without "
                            "them, or is not a benchmark's --json file")
        out += from_json(data["targets"], str(path))
    return out
