// The exports of a sink component: `export const { sinkConnector, configSchema } =
// sinkExports(MySink);`.

import { CALLED_EARLY, configSchema, messageOf, plan } from './glue.js';
import { Config, RecordError } from './index.js';

export function sinkExports(cls) {
  let instance = null;
  const sinkConnector = {
    plan: (pairs, maxTasks) => plan(cls, pairs, maxTasks),
    init(pairs) {
      try {
        instance = new cls(new Config(pairs));
      } catch (e) {
        throw messageOf(e);
      }
    },
    put(info, records) {
      if (instance === null) throw { index: 0, message: CALLED_EARLY };
      try {
        instance.put(info, records);
      } catch (e) {
        const index = e instanceof RecordError ? e.index : 0;
        throw { index, message: messageOf(e) };
      }
    },
    flush() {
      if (instance === null) throw CALLED_EARLY;
      try {
        instance.flush();
      } catch (e) {
        throw messageOf(e);
      }
    },
  };
  return { sinkConnector, configSchema: configSchema(cls) };
}
