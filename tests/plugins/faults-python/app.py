"""A Python transform that misbehaves on purpose, for the tests of the sandbox: ``mode`` is
``raise`` (an exception escapes ``process``: the component traps), ``loop`` (runs forever),
``alloc`` (allocates without bound) or ``pass``."""

from appliance_sdk import Config, Transform, transform_exports


class Faults(Transform):
    def __init__(self, config: Config):
        config.only(["mode"])
        self.mode = config.require("mode", "raise, loop, alloc or pass")

    def process(self, info, records):
        if self.mode == "raise":
            raise RuntimeError("faults-python was told to fail")
        if self.mode == "loop":
            while True:
                pass
        if self.mode == "alloc":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        return records


Transformer, ConfigSchema = transform_exports(Faults)
