// Native unit tests: node --test
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Config, counters, record } from './appliance_sdk/index.js';
import { LogSink } from './logsink.js';

test('counts what it delivered once flushed', () => {
  const sink = new LogSink(new Config({ prefix: 'got' }));
  sink.put({ topic: 't', partition: 0 }, [record({ value: 'a' }), record({ value: 'b' })]);
  sink.flush();
  assert.equal(counters.get('delivered'), 2n);
});
