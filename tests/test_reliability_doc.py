"""docs/RELIABILITY.md lists every bad input the command tests try, with the words its error
line must hold: a case added to a test without its line in the doc fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"


def _listed(cases: list[tuple[list[str], str]]) -> list[str]:
    """The words of each case's message that the doc must hold (placeholders left out)."""
    text = DOC.read_text(encoding="utf-8")
    return [part for _, message in cases for part in re.split(r"\{\w+\}", message)
            if part.strip(" .:") and part not in text]


def test_every_complete_case_is_in_the_doc() -> None:
    from tests.test_cli import BAD_COMPLETE

    assert _listed(BAD_COMPLETE) == []


def test_every_finetune_case_is_in_the_doc() -> None:
    pytest.importorskip("transformers")
    from tests.finetune.test_command import BAD_FINETUNE

    assert _listed(BAD_FINETUNE) == []
