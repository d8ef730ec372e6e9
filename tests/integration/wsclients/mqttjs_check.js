// MQTT.js over ws:// or wss:// (test_websockets.py): a retained message,
// QoS 0/1/2 in both directions, and a will left by a client whose
// socket dies. Prints one JSON line with what the subscriber received.
// usage: node mqttjs_check.js URL CAFILE|-
const fs = require('fs');
const mqtt = require('mqtt');
const url = process.argv[2];
const ca = process.argv[3] !== '-' ? fs.readFileSync(process.argv[3]) : undefined;
const opts = (id, extra) => Object.assign({clientId: id, reconnectPeriod: 0,
  connectTimeout: 5000, ca: ca, rejectUnauthorized: !!ca}, extra || {});
const got = [];
const fail = (why) => { console.log(JSON.stringify({error: String(why)})); process.exit(2); };
setTimeout(() => fail('timeout; got ' + JSON.stringify(got)), 15000);

function connect(id, extra) {
  return new Promise((resolve) => {
    const c = mqtt.connect(url, opts(id, extra));
    c.on('error', fail);
    c.once('connect', () => resolve(c));
  });
}

(async () => {
  const pub = await connect('js-pub');
  await new Promise((r) => pub.publish('ws/retained', 'keep', {qos: 1, retain: true}, r));
  const sub = await connect('js-sub');
  sub.on('message', (topic, payload, packet) => {
    got.push({topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain});
    if (got.length === 4) {
      // A client with a will whose connection dies without DISCONNECT.
      connect('js-will', {will: {topic: 'ws/will', payload: 'gone', qos: 1}}).then((w) => {
        console.log(JSON.stringify({got}));
        w.stream.destroy();
        setTimeout(() => process.exit(0), 300);
      });
    }
  });
  await new Promise((r) => sub.subscribe('ws/#', {qos: 2}, r));
  await new Promise((r) => setTimeout(r, 200));
  pub.publish('ws/q0', 'zero', {qos: 0});
  pub.publish('ws/q1', 'one', {qos: 1});
  pub.publish('ws/q2', 'two', {qos: 2});
})().catch(fail);
