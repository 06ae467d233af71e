"""What the appliance offers a plugin: its log, the wall clock and counters. Under plain
CPython the log goes to Python's ``logging``, the clock is the system's and counters are
kept in ``COUNTERS`` (for tests)."""

import enum
import logging
import time
from typing import Dict

from .bindings import IN_COMPONENT

if IN_COMPONENT:  # pragma: no cover - only inside a component
    from wit_world.imports import host as _host

    Level = _host.Level
else:

    class Level(enum.Enum):
        ERROR = 0
        WARN = 1
        INFO = 2
        DEBUG = 3
        TRACE = 4


COUNTERS: Dict[str, int] = {}
_LOGGING = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG, 4: 5}


def log(level: "Level", message: str) -> None:
    """Logs through the appliance's log, tagged with the plugin instance."""
    if IN_COMPONENT:
        _host.log(level, message)
    else:
        logging.getLogger("appliance.plugin").log(_LOGGING[level.value], message)


def now_ms() -> int:
    """Wall-clock time, milliseconds since the Unix epoch."""
    if IN_COMPONENT:
        return _host.now_ms()
    return time.time_ns() // 1_000_000


def counter_add(name: str, delta: int = 1) -> None:
    """Adds ``delta`` to this instance's counter ``name``
    (``appliance_plugin_counter_total``)."""
    if IN_COMPONENT:
        _host.counter_add(name, delta)
    else:
        COUNTERS[name] = COUNTERS.get(name, 0) + delta
