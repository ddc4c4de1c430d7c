"""The load of benches/alloc.sh: NS MQTT 5 subscribers of `f/t` (QoS 0) and one publisher
sending M messages with a 64-byte payload and 8 user properties, in rounds of 20 that each
wait until every subscriber has all of them (so nothing is dropped and the broker's work is
exactly M x NS deliveries). Usage: alloc_driver.py PORT NS M"""
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port, ns, m = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
counts = [0] * ns
lock = threading.Condition()
subacked = []


def client(cid):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    return c


for i in range(ns):
    c = client(f"s{i}")

    def on_message(_c, _u, _m, i=i):
        with lock:
            counts[i] += 1
            lock.notify_all()

    c.on_message = on_message
    c.on_subscribe = lambda *_: subacked.append(1)
    c.on_connect = lambda cl, *_: cl.subscribe("f/t", qos=0)
    c.loop_start()
deadline = time.time() + 120
while len(subacked) < ns:
    if time.time() > deadline:
        sys.exit(f"only {len(subacked)} of {ns} subscriptions in 120 s")
    time.sleep(0.05)
publisher = client("publisher")
publisher.loop_start()
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = [(f"key{k}", f"value-{k}-abcdefgh") for k in range(8)]
ROUND = 20
for r in range(m // ROUND):
    for _ in range(ROUND):
        publisher.publish("f/t", b"x" * 64, qos=0, properties=props)
    with lock:
        while min(counts) < (r + 1) * ROUND:
            if not lock.wait(120):
                sys.exit(f"stuck at {min(counts)} of {(r + 1) * ROUND}")
print(sum(counts))
