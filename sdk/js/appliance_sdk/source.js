// The exports of a source component: `export const { sourceConnector, configSchema } =
// sourceExports(MySource);`.

import { emit } from 'appliance:plugin/source-output@0.1.0';

import { CALLED_EARLY, configSchema, messageOf, plan } from './glue.js';
import { Config } from './index.js';

export function sourceExports(cls) {
  let instance = null;
  const sourceConnector = {
    plan: (pairs, maxTasks) => plan(cls, pairs, maxTasks),
    init(pairs, resumeAfter) {
      try {
        instance = new cls(new Config(pairs), resumeAfter ?? null);
      } catch (e) {
        throw messageOf(e);
      }
    },
    poll(max) {
      if (instance === null) throw CALLED_EARLY;
      let polled;
      try {
        polled = instance.poll(max);
      } catch (e) {
        throw messageOf(e);
      }
      if (polled.length > 0) emit(polled.map(([record, position]) => ({ record, position })));
    },
  };
  return { sourceConnector, configSchema: configSchema(cls) };
}
