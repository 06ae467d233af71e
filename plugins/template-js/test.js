// Native unit tests: node --test
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { runTransform, record, text } from './appliance_sdk/index.js';
import { Uppercase } from './uppercase.js';

test('upper-cases the field and leaves other records alone', () => {
  const out = runTransform(Uppercase, { field: 'a.b' }, [
    record({ value: '{"a":{"b":"hi"}}' }),
    record({ value: '[1]' }),
  ]);
  assert.deepEqual(out.map((r) => text(r.value)), ['{"a":{"b":"HI"}}', '[1]']);
  assert.deepEqual(out.map((r) => r.offset), [0n, 1n]);
});

test('a missing field setting says what to give', () => {
  assert.throws(() => runTransform(Uppercase, {}, []), /`field` is required/);
});
