"""The classes componentize-py exports, built from a plugin's class: the glue between the
WIT world and the SDK's base classes. An exception in the plugin's own code becomes the
verdict the WIT function returns (the configuration rejected, the record's error, the task
failed); anything else traps, and the appliance fails the instance with its stderr. Under
plain CPython there is nothing to export: each function returns ``(None, None)``."""

from .bindings import IN_COMPONENT
from .config import Config
from .plugin import RecordError, describe

#: Exceptions that are faults of the plugin, never a verdict: they trap.
FAULTS = (MemoryError, RecursionError)

_CALLED_EARLY = "called before a successful init"


def _exports():
    from componentize_py_types import Err
    from wit_world import exports
    from wit_world.imports import types

    return Err, exports, types


def _schema(exports, cls):
    class ConfigSchema(exports.ConfigSchema):
        def secret_keys(self):
            return [str(k) for k in cls.SECRET_KEYS]

    return ConfigSchema


def _plan(Err, cls, config, max_tasks):
    try:
        planned = cls.plan(Config(config), max_tasks)
    except FAULTS:
        raise
    except Exception as e:
        raise Err(describe(e)) from None
    return [(c if isinstance(c, Config) else Config(c)).pairs() for c in planned]


def transform_exports(cls):
    """``Transformer, ConfigSchema = transform_exports(MyTransform)`` in the module
    componentize-py builds."""
    if not IN_COMPONENT:
        return None, None
    Err, exports, types = _exports()
    from wit_world.imports import output

    slot = {}

    class Transformer(exports.Transformer):
        def init(self, config):
            try:
                slot["instance"] = cls(Config(config))
            except FAULTS:
                raise
            except Exception as e:
                raise Err(describe(e)) from None

        def process(self, info, records):
            instance = slot.get("instance")
            if instance is None:
                raise Err(types.RecordError(0, _CALLED_EARLY))
            try:
                out = instance.process(info, records)
            except RecordError as e:
                raise Err(types.RecordError(e.index, e.message)) from None
            if out:
                output.emit(out)

    return Transformer, _schema(exports, cls)


def source_exports(cls):
    """``SourceConnector, ConfigSchema = source_exports(MySource)``."""
    if not IN_COMPONENT:
        return None, None
    Err, exports, types = _exports()
    from wit_world.imports import source_output

    slot = {}

    class SourceConnector(exports.SourceConnector):
        def plan(self, config, max_tasks):
            return _plan(Err, cls, config, max_tasks)

        def init(self, config, resume_after):
            try:
                slot["instance"] = cls(Config(config), resume_after)
            except FAULTS:
                raise
            except Exception as e:
                raise Err(describe(e)) from None

        def poll(self, max_records):
            instance = slot.get("instance")
            if instance is None:
                raise Err(_CALLED_EARLY)
            try:
                polled = instance.poll(max_records)
            except FAULTS:
                raise
            except Exception as e:
                raise Err(describe(e)) from None
            for _, position in polled:
                if not isinstance(position, (bytes, bytearray)):
                    raise Err(f"a position is {type(position).__name__}, not bytes: encode it")
            if polled:
                source_output.emit(
                    [types.SourceRecord(record, bytes(position)) for record, position in polled]
                )

    return SourceConnector, _schema(exports, cls)


def sink_exports(cls):
    """``SinkConnector, ConfigSchema = sink_exports(MySink)``."""
    if not IN_COMPONENT:
        return None, None
    Err, exports, types = _exports()
    slot = {}

    class SinkConnector(exports.SinkConnector):
        def plan(self, config, max_tasks):
            return _plan(Err, cls, config, max_tasks)

        def init(self, config):
            try:
                slot["instance"] = cls(Config(config))
            except FAULTS:
                raise
            except Exception as e:
                raise Err(describe(e)) from None

        def put(self, info, records):
            instance = slot.get("instance")
            if instance is None:
                raise Err(types.RecordError(0, _CALLED_EARLY))
            try:
                instance.put(info, records)
            except RecordError as e:
                raise Err(types.RecordError(e.index, e.message)) from None
            except FAULTS:
                raise
            except Exception as e:
                raise Err(types.RecordError(0, describe(e))) from None

        def flush(self):
            instance = slot.get("instance")
            if instance is None:
                raise Err(_CALLED_EARLY)
            try:
                instance.flush()
            except FAULTS:
                raise
            except Exception as e:
                raise Err(describe(e)) from None

    return SinkConnector, _schema(exports, cls)
