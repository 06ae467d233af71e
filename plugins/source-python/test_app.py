"""Native unit tests: python -m unittest (with sdk/python on PYTHONPATH)."""

import unittest

from appliance_sdk.testing import poll_source

from app import Numbers


class NumbersTest(unittest.TestCase):
    def test_numbers_resume_after_the_stored_position(self):
        first = poll_source(Numbers, {"count": "5", "keys": "2"}, max_records=3)
        self.assertEqual([r.value for r, _ in first], [b'{"n":1}', b'{"n":2}', b'{"n":3}'])
        self.assertEqual(first[0][0].key, b"key-1")
        rest = poll_source(Numbers, {"count": "5"}, max_records=10, resume_after=first[-1][1])
        self.assertEqual([p for _, p in rest], [b"4", b"5"])


if __name__ == "__main__":
    unittest.main()
