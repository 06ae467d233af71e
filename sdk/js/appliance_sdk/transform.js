// The exports of a transform component: `export const { transformer, configSchema } =
// transformExports(MyTransform);` in the module componentize-js builds.

import { emit } from 'appliance:plugin/output@0.1.0';

import { CALLED_EARLY, configSchema, messageOf } from './glue.js';
import { Config, RecordError } from './index.js';

export function transformExports(cls) {
  let instance = null;
  const transformer = {
    init(pairs) {
      try {
        instance = new cls(new Config(pairs));
      } catch (e) {
        throw messageOf(e);
      }
    },
    process(info, records) {
      if (instance === null) throw { index: 0, message: CALLED_EARLY };
      let out;
      try {
        out = instance.process(info, records);
      } catch (e) {
        if (e instanceof RecordError) throw { index: e.index, message: e.message };
        throw e;
      }
      if (out.length > 0) emit(out);
    },
  };
  return { transformer, configSchema: configSchema(cls) };
}
