// The JavaScript template of docs/plugin-guide.md: upper-cases the text field `field` (a
// dotted path) of JSON values and counts the records it changed.

import { Transform, counterAdd, getPath, jsonValue, setJsonValue } from './appliance_sdk/index.js';

export class Uppercase extends Transform {
  constructor(config) {
    super(config);
    config.only(['field']);
    const path = config.require('field', 'the dotted path of the text field to upper-case');
    const dot = path.lastIndexOf('.');
    this.parent = dot < 0 ? null : path.slice(0, dot);
    this.leaf = path.slice(dot + 1);
  }

  apply(info, record) {
    const value = jsonValue(record);
    const holder = this.parent === null ? value : getPath(value, this.parent);
    if (holder !== null && typeof holder === 'object' && typeof holder[this.leaf] === 'string') {
      holder[this.leaf] = holder[this.leaf].toUpperCase();
      setJsonValue(record, value);
      counterAdd('uppercased', 1);
    }
    return record;
  }
}
