"""Records, headers and batch information: the WIT types inside a component, dataclasses
with the same fields outside it."""

from dataclasses import dataclass, field
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

        key: Optional[bytes] = None
        value: Optional[bytes] = None
        headers: List[Header] = field(default_factory=list)
        timestamp: int = 0
        offset: int = 0
        topic: Optional[str] = None

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
