import { transformExports } from './appliance_sdk/transform.js';
import { Faults } from './faults.js';

export const { transformer, configSchema } = transformExports(Faults);
