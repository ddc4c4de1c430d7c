// A typed dataloom client: publishes a value of the exported type and reads it back.
// Usage (after tsc): node client.js mqtt://127.0.0.1:PORT
import mqtt from 'mqtt';
import type { SensorsTemperature } from './types';

const reading: SensorsTemperature = { celsius: 21.5, ts: Date.now() };
const topic = 'sensors/kitchen/temperature';

const client = mqtt.connect(process.argv[2], { protocolVersion: 5, clientId: 'typed-client' });
client.on('connect', () => {
  client.subscribe(topic, { qos: 1 }, () => {
    client.publish(topic, JSON.stringify(reading), { qos: 1, retain: true });
  });
});
client.on('message', (_t: string, payload: Buffer) => {
  const got = JSON.parse(payload.toString()) as SensorsTemperature;
  console.log(`read celsius=${got.celsius} ts=${got.ts}`);
  client.end();
});
client.on('error', (e: Error) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
