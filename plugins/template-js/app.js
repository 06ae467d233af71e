// What componentize-js builds: the transform's exports.
import { transformExports } from './appliance_sdk/transform.js';
import { Uppercase } from './uppercase.js';

export const { transformer, configSchema } = transformExports(Uppercase);
