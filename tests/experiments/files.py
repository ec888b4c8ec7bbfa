"""What the experiment tests check in an output folder: its figures and its results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deeplora.experiments import RESULTS


def figures(folder: Path, *stems: str) -> None:
    """Each stem has a real PNG and an SVG."""
    for stem in stems:
        png, svg = folder / f"{stem}.png", folder / f"{stem}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert "<svg" in svg.read_text()


def load(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / RESULTS).read_text())
    return data
