"""The Python source example of docs/plugin-guide.md: produces ``count`` numbered JSON
records (``{"n": 1}`` ...), keyed ``key-<n mod keys>``. Its position is the last number
produced, so a restarted task goes on after the last record the appliance stored."""

from appliance_sdk import Config, Record, Source, now_ms, set_json_value, source_exports


class Numbers(Source):
    @classmethod
    def plan(cls, config: Config, max_tasks: int):
        # One sequence: splitting it would need ranges per task.
        return [config]

    def __init__(self, config: Config, resume_after):
        config.only(["count", "keys"])
        self.count = config.integer("count", 1000, 0, 1_000_000_000)
        self.keys = config.integer("keys", 10, 1, 1_000_000)
        self.next = int(resume_after.decode()) + 1 if resume_after else 1

    def poll(self, max_records: int):
        polled = []
        while self.next <= self.count and len(polled) < max_records:
            n = self.next
            record = Record(f"key-{n % self.keys}".encode(), None, [], now_ms(), 0, None)
            set_json_value(record, {"n": n})
            polled.append((record, str(n).encode()))
            self.next += 1
        return polled


SourceConnector, ConfigSchema = source_exports(Numbers)
