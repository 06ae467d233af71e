"""Records, headers and batch information: the WIT types inside a component, dataclasses
with the same fields outside it."""

from dataclasses import dataclass
from typing import List, Optional

from .bindings import wit_types

if wit_types is not None:  # pragma: no cover - only inside a component
    Record = wit_types.Record
    Header = wit_types.Header
    BatchInfo = wit_types.BatchInfo
else:

    @dataclass
    class Header:
        """A record header; Kafka headers are ordered and may repeat a key."""

        key: str
        value: bytes

    @dataclass
    class Record:
        """One record. ``offset`` is its position in the source partition; an output record
        keeps the offset of the input record it came from. ``topic`` re-routes it."""

        key: Optional[bytes]
        value: Optional[bytes]
        headers: List[Header]
        timestamp: int
        offset: int
        topic: Optional[str]

    @dataclass
    class BatchInfo:
        """Where a batch comes from."""

        topic: str
        partition: int


def header(record, key: str) -> Optional[bytes]:
    """The value of the last header named ``key``, if the record has one."""
    for h in reversed(record.headers):
        if h.key == key:
            return h.value
    return None


def new_record(value=None, key=None, headers=None, timestamp=0, offset=0, topic=None):
    """A record (inside a component and out); ``str`` values and keys are encoded as UTF-8."""
    encode = lambda v: v.encode() if isinstance(v, str) else v  # noqa: E731
    return Record(encode(key), encode(value), list(headers or []), timestamp, offset, topic)
