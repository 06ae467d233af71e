"""Runs a plugin's logic natively, the way the appliance calls it, for unit tests under
plain CPython (``python -m unittest``)."""

from typing import Dict, Iterable, List, Optional

from .config import Config
from .records import BatchInfo, Record


def record(value=None, key=None, headers=None, timestamp=0, offset=0, topic=None) -> Record:
    """A record; ``str`` values and keys are encoded as UTF-8."""
    encode = lambda v: v.encode() if isinstance(v, str) else v  # noqa: E731
    return Record(encode(key), encode(value), list(headers or []), timestamp, offset, topic)


def run_transform(cls, config: Dict[str, str], records: Iterable[Record], topic="t", partition=0) -> List[Record]:
    """Builds the transform from ``config`` and runs one batch; input offsets are set to
    the records' positions when all are 0."""
    batch = list(records)
    if all(r.offset == 0 for r in batch):
        for n, r in enumerate(batch):
            r.offset = n
    return cls(Config(config)).process(BatchInfo(topic, partition), batch)


def poll_source(cls, config: Dict[str, str], max_records=100, resume_after: Optional[bytes] = None):
    """Builds the source and polls it once: (record, position) pairs."""
    return cls(Config(config), resume_after).poll(max_records)
