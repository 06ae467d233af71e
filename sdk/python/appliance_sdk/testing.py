"""Runs a plugin's logic natively, the way the appliance calls it, for unit tests under
plain CPython (``python -m unittest``)."""

from typing import Dict, Iterable, List, Optional

from .config import Config
from .records import BatchInfo, new_record


#: A record with keyword arguments (``str`` encoded as UTF-8).
record = new_record


def run_transform(cls, config: Dict[str, str], records: Iterable, topic="t", partition=0) -> List:
    """Builds the transform from ``config`` and runs one batch; input offsets are set to
    the records' positions when all are 0."""
    batch = list(records)
    if all(r.offset == 0 for r in batch):
        for n, r in enumerate(batch):
            r.offset = n
    offsets = [r.offset for r in batch]
    out = cls(Config(config)).process(BatchInfo(topic, partition), batch)
    # The appliance's contract: outputs keep their inputs' offsets, in input order.
    at = 0
    for r in out:
        while at < len(offsets) and offsets[at] < r.offset:
            at += 1
        assert at < len(offsets) and offsets[at] == r.offset, (
            f"an output has offset {r.offset}, which is not an input's at or after the last"
        )
    return out


def poll_source(cls, config: Dict[str, str], max_records=100, resume_after: Optional[bytes] = None):
    """Builds the source and polls it once: (record, position) pairs; positions must be
    bytes, as the appliance requires."""
    polled = cls(Config(config), resume_after).poll(max_records)
    for _, position in polled:
        assert isinstance(position, (bytes, bytearray)), f"a position is {type(position).__name__}"
    return polled
