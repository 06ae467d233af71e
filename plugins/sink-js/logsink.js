// The JavaScript sink example of docs/plugin-guide.md: writes each record to the appliance's
// log as `delivered <topic>@<offset>: <value>` and counts them. A real sink writes to its
// system in `put` (granted with wasi.net or wasi.dir-rw) and makes it durable in `flush`.

import { Sink, counterAdd, log, text } from './appliance_sdk/index.js';

export class LogSink extends Sink {
  constructor(config) {
    super(config);
    config.only(['prefix']);
    this.prefix = config.get('prefix', 'delivered');
    this.pending = 0;
  }

  put(info, records) {
    for (const record of records) {
      log('info', `${this.prefix} ${info.topic}@${record.offset}: ${text(record.value)}`);
    }
    this.pending += records.length;
  }

  flush() {
    counterAdd('delivered', this.pending);
    this.pending = 0;
  }
}
