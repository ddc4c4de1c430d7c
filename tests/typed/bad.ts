// Must NOT type-check: the exported type says celsius is a number.
import type { SensorsTemperature } from './types';

export const wrong: SensorsTemperature = { celsius: 'hot', ts: 0 };
