"""The Python SDK of the appliance's plugins: transforms, sources and sinks as WebAssembly
components built with componentize-py against ``sdk/wit/plugin.wit``.

A plugin is a plain Python class (``Transform``, ``Source`` or ``Sink``) that the module
componentize-py builds exports with one line::

    Transformer, ConfigSchema = transform_exports(MyTransform)

Inside the component the records are the WIT bindings' own types; outside it (in a plugin's
unit tests under plain CPython) they are this module's look-alikes, and ``testing`` runs a
plugin's logic the way the appliance calls it.
"""

from .config import Config, ConfigError
from .host import Level, counter_add, log, now_ms
from .json import get_path, json_value, set_json_value
from .plugin import RecordError, Sink, Source, Transform
from .exports import sink_exports, source_exports, transform_exports
from .records import BatchInfo, Header, Record, header, new_record

__all__ = [
    "BatchInfo",
    "Config",
    "ConfigError",
    "Header",
    "Level",
    "Record",
    "RecordError",
    "Sink",
    "Source",
    "Transform",
    "counter_add",
    "get_path",
    "header",
    "json_value",
    "log",
    "new_record",
    "now_ms",
    "set_json_value",
    "sink_exports",
    "source_exports",
    "transform_exports",
]
