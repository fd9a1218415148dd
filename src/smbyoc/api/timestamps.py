"""Timestamps as the JSON 1.1 protocol sends them: seconds since the epoch, as a number."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Mapping
from typing import Any

from smbyoc.api.errors import validation


def now() -> float:
    return round(time.time(), 3)


def from_iso(text: str) -> float:
    """An ISO 8601 time (what the engines' results hold) as epoch seconds."""
    return round(_dt.datetime.fromisoformat(text).timestamp(), 3)


#: The List operations' time filters: (member, the field it compares, whether it keeps what is after).
TIME_FILTERS = (("CreationTimeAfter", "CreationTime", True), ("CreationTimeBefore", "CreationTime", False),
                ("LastModifiedTimeAfter", "LastModifiedTime", True),
                ("LastModifiedTimeBefore", "LastModifiedTime", False))


def parse(value: Any, member: str) -> float:
    """A request's timestamp as epoch seconds: a number, as botocore sends one, or any text botocore's
    ``parse_timestamp`` reads (epoch seconds, ISO 8601, RFC 822), within the years a datetime holds; anything else
    a ValidationException naming ``member`` (its path in the request)."""
    from botocore.utils import parse_timestamp

    if isinstance(value, (int, float, str)) and not isinstance(value, bool) and str(value).strip():
        try:
            return round(float(parse_timestamp(value).timestamp()), 3)
        except (ValueError, TypeError, OverflowError, OSError, RuntimeError):
            pass
    name = member.rsplit(".", 1)[-1]
    raise validation(f"Value {str(value)[:100]!r} at '{member[:-len(name)]}{name[:1].lower()}{name[1:]}' is not a "
                     "timestamp (epoch seconds, ISO 8601 or RFC 822, years 1-9999)")


def time_filtered(items: list[dict[str, Any]], request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``items`` kept by the request's ``CreationTimeAfter/Before`` and ``LastModifiedTimeAfter/Before``
    (strictly after, strictly before; an item without the field is left out by a filter on it)."""
    for member, field_name, after in TIME_FILTERS:
        if member in request:
            limit = parse(request[member], member)
            items = [i for i in items if isinstance(i.get(field_name), (int, float))
                     and (i[field_name] > limit if after else i[field_name] < limit)]
    return items
