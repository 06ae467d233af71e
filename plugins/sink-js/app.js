// What componentize-js builds: the sink's exports.
import { sinkExports } from './appliance_sdk/sink.js';
import { LogSink } from './logsink.js';

export const { sinkConnector, configSchema } = sinkExports(LogSink);
