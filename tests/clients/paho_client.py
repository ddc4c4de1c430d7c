"""paho-mqtt 2.x (PyPI) against dataloom, driven by tests/clients.rs:
    python paho_client.py HOST PORT PROTOCOL KEY_ID SECRET SENSOR
PROTOCOL is 311 or 5. Prints one line per event; the test compares them. The part between
the README markers is the README's "Clients" snippet (tests/readme.rs checks they are the same).
"""

import sys
import threading

host, port, protocol, key_id, secret, sensor = sys.argv[1:]
port = int(port)
done = threading.Event()

# README: begin paho
import paho.mqtt.client as mqtt

topic = f"sensors/{sensor}/temperature"
client = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
)
client.username_pw_set(key_id, secret)  # the API key's id and secret


def on_connect(client, userdata, flags, reason_code, properties):
    print("connected", flush=True)
    # State is a retained message; the QoS 1 PUBACK comes once it is on disk.
    client.publish(topic, '{"celsius": 21.5, "ts": 1767225600000}', qos=1, retain=True)
    client.subscribe(f"sensors/{sensor}/#", qos=1)


def on_message(client, userdata, msg):
    if msg.retain:
        # The snapshot: the current state of every matching topic, sent on SUBSCRIBE.
        print(f"snapshot {msg.topic} {msg.payload.decode()}", flush=True)
        client.publish(topic, '{"celsius": 22, "ts": 1767225660000}', qos=1, retain=True)
    else:
        print(f"live {msg.topic} {msg.payload.decode()}", flush=True)
        # The schema wants a number: MQTT 5 gets PUBACK 0x99 with the reason string. MQTT
        # 3.1.1 has no negative ack: the broker closes the connection (schemas.on_invalid =
        # "disconnect", the default) or acknowledges and drops the message ("drop").
        client.publish(topic, '{"celsius": "warm", "ts": 1767225720000}', qos=1)


acked = []  # the two valid values


def on_publish(client, userdata, mid, reason_code, properties):
    if reason_code.is_failure:
        print(f"rejected 0x{reason_code.value:x} {properties.ReasonString}", flush=True)
        client.disconnect()
    elif len(acked) == 2:
        print("acknowledged", flush=True)
        client.disconnect()
    else:
        acked.append(mid)


def on_disconnect(client, userdata, flags, reason_code, properties):
    if reason_code != 0:
        print("connection closed by the broker", flush=True)
    done.set()


client.on_connect = on_connect
client.on_message = on_message
client.on_publish = on_publish
client.on_disconnect = on_disconnect
client.connect(host, port)
client.loop_start()
# README: end paho

if not done.wait(10):
    print("error: timed out", flush=True)
    sys.exit(1)
client.loop_stop()
