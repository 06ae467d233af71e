// Native unit tests: node --test
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { runTransform, record } from './appliance_sdk/index.js';
import { Faults } from './faults.js';

test('throws when told to', () => {
  assert.throws(() => runTransform(Faults, { mode: 'throw' }, [record({ value: 'x' })]), /told to fail/);
});
