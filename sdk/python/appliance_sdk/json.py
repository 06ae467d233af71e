"""JSON values of records, and dotted paths into them."""

import json as _json
from typing import Any, Optional


class _Missing:
    pass


MISSING = _Missing()


def json_value(record) -> Any:
    """The record's value parsed as JSON (``None`` for a tombstone); a value that is not JSON
    raises ``ValueError`` with what is wrong."""
    if record.value is None:
        return None
    try:
        return _json.loads(record.value)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"the value is not JSON: {e}") from None


def set_json_value(record, value: Any) -> None:
    record.value = _json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def get_path(value: Any, path: str, default: Any = None) -> Any:
    """The field at the dotted ``path`` (``a.b.c``) of nested objects, or ``default``."""
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value
