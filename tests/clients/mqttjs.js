// MQTT.js (npm `mqtt`) against dataloom, driven by tests/clients.rs:
//   node mqttjs.js URL PROTOCOL_VERSION KEY_ID SECRET SENSOR
// URL is mqtt://host:port or ws://host:port/mqtt; PROTOCOL_VERSION 4 (MQTT 3.1.1) or 5.
// Prints one line per event; the test compares them. The part between the README markers is
// the README's "Clients" snippet (tests/readme.rs checks that they are the same).
'use strict';
const [url, version, keyId, secret, sensor] = process.argv.slice(2);
setTimeout(() => { console.log('error: timed out'); process.exit(1); }, 10000).unref();

// README: begin mqttjs
const mqtt = require('mqtt');

const topic = `sensors/${sensor}/temperature`;
const client = mqtt.connect(url, {
  protocolVersion: Number(version), // 4: MQTT 3.1.1, 5: MQTT 5
  username: keyId, // the API key's id
  password: secret, // and its secret
  reconnectPeriod: 0,
});

client.on('connect', async () => {
  console.log('connected');
  try {
    // State is a retained message; the QoS 1 PUBACK comes once it is on disk.
    await client.publishAsync(topic, '{"celsius": 21.5, "ts": 1767225600000}', { qos: 1, retain: true });
    await client.subscribeAsync(`sensors/${sensor}/#`, { qos: 1 });
  } catch (e) {
    console.log(`error: ${e.message}`);
    process.exit(1);
  }
});

client.on('message', (t, payload, packet) => {
  if (packet.retain) {
    // The snapshot: the current state of every matching topic, sent on SUBSCRIBE.
    console.log(`snapshot ${t} ${payload}`);
    client.publish(topic, '{"celsius": 22, "ts": 1767225660000}', { qos: 1, retain: true });
  } else {
    console.log(`live ${t} ${payload}`);
    publishInvalid();
  }
});

function publishInvalid() {
  // The schema wants a number: MQTT 5 gets PUBACK 0x99 with the reason string. MQTT 3.1.1 has
  // no negative ack: the broker closes the connection (schemas.on_invalid = "disconnect", the
  // default) or acknowledges and drops the message ("drop").
  client.on('close', () => console.log('connection closed by the broker'));
  client.publish(topic, '{"celsius": "warm", "ts": 1767225720000}', { qos: 1 }, (err, packet) => {
    if (err) console.log(`rejected 0x${err.code.toString(16)} ${packet.properties.reasonString}`);
    else console.log('acknowledged');
    client.removeAllListeners('close');
    client.end();
  });
}
// README: end mqttjs

client.on('error', (e) => {
  // A close by the broker can reach the socket as a reset (the broker had unread bytes of
  // ours, e.g. a PUBACK); 'close' follows and reports it.
  if (e.code === 'ECONNRESET' || e.code === 'EPIPE') return;
  console.log(`error: ${e.message}`);
  process.exit(1);
});
