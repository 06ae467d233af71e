// What the three worlds' glue shares: the host's functions, configuration plans and the
// configuration schema. Imports only `appliance:plugin/host`, which every world has.

import * as witHost from 'appliance:plugin/host@0.1.0';

import { Config, setHost } from './index.js';

setHost({
  log: (level, message) => witHost.log(level, message),
  nowMs: () => witHost.nowMs(),
  counterAdd: (name, delta) => witHost.counterAdd(name, delta),
});

export const CALLED_EARLY = 'called before a successful init';

/** The message of anything a plugin threw. */
export function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}

export function configSchema(cls) {
  return { secretKeys: () => [...(cls.secretKeys ?? [])] };
}

export function plan(cls, pairs, maxTasks) {
  let planned;
  try {
    planned = cls.plan(new Config(pairs), maxTasks);
  } catch (e) {
    throw messageOf(e);
  }
  return planned.map((c) => (c instanceof Config ? c.pairs : c));
}
