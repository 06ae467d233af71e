"""The generated WIT bindings, when running inside a component (componentize-py provides
the ``wit_world`` package at build time); ``None`` under plain CPython."""

try:  # pragma: no cover - only inside a component
    import wit_world  # noqa: F401
    from wit_world.imports import types as wit_types
except ImportError:
    wit_types = None

IN_COMPONENT = wit_types is not None
