// The JavaScript SDK of the appliance's plugins: transforms, sources and sinks as
// WebAssembly components built with componentize-js against sdk/wit/plugin.wit.
//
// This module is plain JavaScript (no WIT imports), so a plugin's logic imports it and runs
// under Node for unit tests. The glue that a component exports lives in transform.js,
// source.js and sink.js, one per WIT world; they import the appliance's interfaces and hand
// the host's functions to `setHost`.

/** A configuration the plugin rejects; the message is shown to the operator. */
export class ConfigError extends Error {}

/** A plugin's verdict on the record at `index` of its batch: the pipeline's error policy
 * (fail, skip or dead-letter) applies to it. */
export class RecordError extends Error {
  constructor(index, message) {
    super(message);
    this.index = index;
  }
}

/** An instance's configuration: the `key=value` pairs the operator gave it. */
export class Config {
  constructor(pairs = []) {
    this.pairs = Array.isArray(pairs) ? pairs.map(([k, v]) => [String(k), String(v)]) : Object.entries(pairs);
  }

  /** The last value given for `key` (a later pair overrides an earlier one). */
  get(key, fallback = undefined) {
    for (let i = this.pairs.length - 1; i >= 0; i--) {
      if (this.pairs[i][0] === key) return this.pairs[i][1];
    }
    return fallback;
  }

  require(key, what) {
    const value = this.get(key);
    if (value === undefined || value === '') throw new ConfigError(`\`${key}\` is required: ${what}`);
    return value;
  }

  /** Rejects keys the plugin does not take, naming those it does. */
  only(known) {
    const unknown = [...new Set(this.pairs.map(([k]) => k).filter((k) => !known.includes(k)))].sort();
    if (unknown.length > 0) {
      throw new ConfigError(`unknown key(s) ${unknown.join(', ')}; this plugin takes: ${known.join(', ')}`);
    }
  }

  integer(key, fallback, low, high) {
    const text = this.get(key);
    if (text === undefined) return fallback;
    if (!/^-?\d+$/.test(text)) throw new ConfigError(`\`${key}\` = ${JSON.stringify(text)} is not a whole number`);
    const value = Number(text);
    if (value < low || value > high) throw new ConfigError(`\`${key}\` = ${value} is outside ${low}..=${high}`);
    return value;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The record's value parsed as JSON (`null` for a tombstone); a value that is not JSON
 * throws with what is wrong. */
export function jsonValue(record) {
  if (record.value === undefined || record.value === null) return null;
  try {
    return JSON.parse(decoder.decode(record.value));
  } catch (e) {
    throw new Error(`the value is not JSON: ${e.message}`);
  }
}

export function setJsonValue(record, value) {
  record.value = encoder.encode(JSON.stringify(value));
}

export function text(bytes) {
  return bytes === undefined || bytes === null ? null : decoder.decode(bytes);
}

export function bytes(string) {
  return encoder.encode(string);
}

/** The field at the dotted `path` of nested objects, or `fallback`. */
export function getPath(value, path, fallback = undefined) {
  for (const part of path.split('.')) {
    if (value === null || typeof value !== 'object' || !(part in value)) return fallback;
    value = value[part];
  }
  return value;
}

/** A record, with the WIT fields (`key` and `value` bytes or undefined). */
export function record({ key, value, headers = [], timestamp = 0n, offset = 0n, topic } = {}) {
  const asBytes = (v) => (typeof v === 'string' ? encoder.encode(v) : v);
  return { key: asBytes(key), value: asBytes(value), headers, timestamp: BigInt(timestamp), offset: BigInt(offset), topic };
}

// The host's functions: the appliance's inside a component, these under Node (for tests).
export const counters = new Map();
let host = {
  log: (level, message) => console.error(`[${level}] ${message}`),
  nowMs: () => BigInt(Date.now()),
  counterAdd: (name, delta) => counters.set(name, (counters.get(name) ?? 0n) + BigInt(delta)),
};

/** Called by the component glue with the appliance's functions. */
export function setHost(functions) {
  host = functions;
}

/** Logs through the appliance's log (`level`: error, warn, info, debug, trace). */
export const log = (level, message) => host.log(level, message);
/** Wall-clock time, milliseconds since the Unix epoch (a BigInt). */
export const nowMs = () => host.nowMs();
/** Adds `delta` to this instance's counter `name` (appliance_plugin_counter_total). */
export const counterAdd = (name, delta = 1) => host.counterAdd(name, BigInt(delta));

/** A single-message transform. One instance serves one partition of one pipeline. */
export class Transform {
  static secretKeys = [];

  /** Throw (a ConfigError) to reject the configuration, saying which key is wrong. */
  constructor(config) {}

  /** Returns the record (changed or not), null to drop it, or an array to split it (each
   * output keeps the input's `offset`). Throwing hands the record to the error policy. */
  apply(info, record) {
    return record;
  }

  /** Transforms one batch; by default `apply` on each record, in order. Every output of a
   * record gets that record's `offset`, as the appliance requires. */
  process(info, records) {
    const out = [];
    records.forEach((record, index) => {
      const offset = record.offset;
      let result;
      try {
        result = this.apply(info, record);
      } catch (e) {
        if (e instanceof RecordError) throw new RecordError(index, e.message);
        if (e instanceof RangeError) throw e;
        throw new RecordError(index, `${e?.name ?? 'Error'}: ${e?.message ?? e}`);
      }
      if (result === null || result === undefined) return;
      for (const output of Array.isArray(result) ? result : [result]) {
        output.offset = offset;
        out.push(output);
      }
    });
    return out;
  }
}

/** A source connector task; its position is opaque bytes handed back on restart. */
export class Source {
  static secretKeys = [];

  /** Splits the work into at most `maxTasks` task configurations (default: one). */
  static plan(config, maxTasks) {
    return [config];
  }

  constructor(config, resumeAfter) {}

  /** Up to `max` [record, position] pairs; none when nothing is available now. */
  poll(max) {
    return [];
  }
}

/** A sink connector task. */
export class Sink {
  static secretKeys = [];

  static plan(config, maxTasks) {
    return [config];
  }

  constructor(config) {}

  /** Delivers a batch; throw `new RecordError(index, ...)` for a record it cannot take. */
  put(info, records) {}

  /** Makes everything `put` so far durable; the appliance commits after it. */
  flush() {}
}

/** Builds the transform from `config` and runs one batch, as the appliance would; offsets
 * are set to the records' positions when all are 0. For unit tests under Node. */
export function runTransform(cls, config, records, info = { topic: 't', partition: 0 }) {
  if (records.every((r) => r.offset === 0n)) records.forEach((r, n) => (r.offset = BigInt(n)));
  return new cls(new Config(config)).process(info, records);
}
