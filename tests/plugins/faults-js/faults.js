// A JavaScript transform that misbehaves on purpose, for the tests of the sandbox: `mode` is
// `throw` (an exception escapes `process`: the component traps), `loop` (runs forever),
// `alloc` (allocates without bound) or `pass`.

import { Transform } from './appliance_sdk/index.js';

export class Faults extends Transform {
  constructor(config) {
    super(config);
    config.only(['mode']);
    this.mode = config.require('mode', 'throw, loop, alloc or pass');
  }

  process(info, records) {
    if (this.mode === 'throw') throw new Error('faults-js was told to fail');
    if (this.mode === 'loop') for (;;);
    if (this.mode === 'alloc') {
      const hoard = [];
      for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
    }
    return records;
  }
}
