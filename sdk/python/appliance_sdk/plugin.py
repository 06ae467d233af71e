"""The base classes plugin authors derive from."""

from typing import List, Optional, Sequence, Tuple, Union

from .config import Config


def describe(error: BaseException) -> str:
    """An exception as an operator reads it: its message, or its type when it has none."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class RecordError(Exception):
    """A plugin's verdict on the record at ``index`` of its batch: the pipeline's error
    policy (fail, skip or dead-letter) applies to it."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index
        self.message = message


class Transform:
    """A single-message transform. One instance serves one partition of one pipeline, so it
    may keep state between batches (in memory: lost on restart)."""

    #: Configuration keys whose values are secrets, accepted only as `${file:..}`/`${env:..}`.
    SECRET_KEYS: Sequence[str] = ()

    def __init__(self, config: Config):
        """Raise ``ConfigError`` (or ``ValueError``) to reject the configuration; say which
        key is wrong and what it expects."""

    def apply(self, info, record):
        """Transforms one record: return it (changed or not), ``None`` to drop it, or a list
        to split it (each output keeps the input's ``offset``). Raising hands the record to
        the pipeline's error policy."""
        return record

    def process(self, info, records: List) -> List:
        """Transforms one batch; by default ``apply`` on each record, in order. Every output
        of a record gets that record's ``offset``, as the appliance requires."""
        out = []
        for index, record in enumerate(records):
            offset = record.offset
            try:
                result = self.apply(info, record)
            except RecordError as e:
                raise RecordError(index, e.message) from None
            except (MemoryError, RecursionError):
                raise
            except Exception as e:  # the record's verdict, not a fault of the plugin
                raise RecordError(index, describe(e)) from None
            if result is None:
                continue
            outputs = list(result) if isinstance(result, (list, tuple)) else [result]
            for output in outputs:
                output.offset = offset
            out.extend(outputs)
        return out


class Source:
    """A source connector task: pulls records from an external system. Its position is
    opaque bytes stored with the records it produced, handed back on restart."""

    SECRET_KEYS: Sequence[str] = ()

    @classmethod
    def plan(cls, config: Config, max_tasks: int) -> List[Config]:
        """Splits the work into at most ``max_tasks`` task configurations (default: one)."""
        return [config]

    def __init__(self, config: Config, resume_after: Optional[bytes]):
        pass

    def poll(self, max_records: int) -> List[Tuple[object, bytes]]:
        """Up to ``max_records`` (record, position after it) pairs; none when nothing is
        available now. Raising fails the task (restarted with backoff)."""
        return []


class Sink:
    """A sink connector task: writes records to an external system."""

    SECRET_KEYS: Sequence[str] = ()

    @classmethod
    def plan(cls, config: Config, max_tasks: int) -> List[Config]:
        return [config]

    def __init__(self, config: Config):
        pass

    def put(self, info, records: List) -> None:
        """Delivers a batch; raise ``RecordError(index, ...)`` for a record it cannot take
        (the records before it are taken)."""

    def flush(self) -> None:
        """Makes everything ``put`` so far durable; the appliance commits after it."""


ConfigLike = Union[Config, Sequence[Tuple[str, str]]]
