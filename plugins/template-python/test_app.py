"""Native unit tests: python -m unittest (with sdk/python on PYTHONPATH)."""

import unittest

from appliance_sdk import ConfigError
from appliance_sdk.testing import record, run_transform

from app import Uppercase


class UppercaseTest(unittest.TestCase):
    def test_upper_cases_the_field_and_leaves_other_records_alone(self):
        out = run_transform(
            Uppercase, {"field": "a.b"}, [record('{"a":{"b":"hi"}}'), record("[1]")]
        )
        self.assertEqual([r.value for r in out], [b'{"a":{"b":"HI"}}', b"[1]"])
        self.assertEqual([r.offset for r in out], [0, 1])

    def test_a_missing_field_setting_says_what_to_give(self):
        with self.assertRaisesRegex(ConfigError, "`field` is required"):
            run_transform(Uppercase, {}, [])


if __name__ == "__main__":
    unittest.main()
