"""The Python template of docs/plugin-guide.md: upper-cases the text field ``field`` (a
dotted path) of JSON values and counts the records it changed."""

from appliance_sdk import (
    Config,
    Transform,
    counter_add,
    get_path,
    json_value,
    set_json_value,
    transform_exports,
)


class Uppercase(Transform):
    def __init__(self, config: Config):
        config.only(["field"])
        self.path = config.require("field", "the dotted path of the text field to upper-case")
        self.parent, _, self.leaf = self.path.rpartition(".")

    def apply(self, info, record):
        value = json_value(record)
        holder = get_path(value, self.parent) if self.parent else value
        if isinstance(holder, dict) and isinstance(holder.get(self.leaf), str):
            holder[self.leaf] = holder[self.leaf].upper()
            set_json_value(record, value)
            counter_add("uppercased", 1)
        return record


# What componentize-py exports (nothing under plain CPython, where the unit tests run).
Transformer, ConfigSchema = transform_exports(Uppercase)
