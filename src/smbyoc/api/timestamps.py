"""Timestamps as the JSON 1.1 protocol sends them: seconds since the epoch, as a number."""

from __future__ import annotations

import datetime as _dt
import time


def now() -> float:
    return round(time.time(), 3)


def from_iso(text: str) -> float:
    """An ISO 8601 time (what the engines' results hold) as epoch seconds."""
    return round(_dt.datetime.fromisoformat(text).timestamp(), 3)
