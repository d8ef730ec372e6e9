"""MQTT over WebSockets over TLS with a real client, run INSIDE the VM by
guest_ktls_wss.sh: paho-mqtt with transport="websockets" on kite's wss
listener, and a plain paho client on its MQTT listener. Each side
publishes to the other, at QoS 1, a small message and one of 40 KB (three
TLS records, several WebSocket frames of kite's); each must arrive
exactly. Exit 0 iff all did.

    python3 paho_wss.py WSS_PORT PLAIN_PORT CA TLS_VERSION"""
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt

wss_port, plain_port, ca, version = sys.argv[1:5]
small = b"small over wss"
big = bytes(range(256)) * 160  # 40 KiB


def client(cid, **kw):
    got, subscribed = [], threading.Event()
    c = mqtt.Client(client_id=cid, protocol=mqtt.MQTTv311, **kw)
    c.on_message = lambda cl, u, m: got.append((m.topic, m.payload))
    c.on_subscribe = lambda cl, u, mid, q: subscribed.set()
    return c, got, subscribed


wss, wss_got, wss_subbed = client("paho-wss", transport="websockets")
wss.tls_set(ca_certs=ca, tls_version=ssl.PROTOCOL_TLS_CLIENT)
ctx = wss._ssl_context
if version == "tlsv1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
else:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
plain, plain_got, plain_subbed = client("paho-plain")
for c, port, topic, ev in ((wss, wss_port, "to-wss/#", wss_subbed),
                           (plain, plain_port, "from-wss/#", plain_subbed)):
    c.connect("localhost", int(port), 30)
    c.loop_start()
    c.subscribe(topic, qos=1)
    if not ev.wait(20):
        print("no SUBACK on port %s" % port)
        sys.exit(1)
for m in (wss.publish("from-wss/small", small, qos=1),
          wss.publish("from-wss/big", big, qos=1),
          plain.publish("to-wss/big", big, qos=1)):
    m.wait_for_publish(20)
    if not m.is_published():
        print("no PUBACK for mid %d" % m.mid)
        sys.exit(1)
deadline = time.monotonic() + 20
while time.monotonic() < deadline and (len(plain_got) < 2 or len(wss_got) < 1):
    time.sleep(0.05)
for c in (wss, plain):
    c.loop_stop()
    c.disconnect()
want_plain = [("from-wss/small", small), ("from-wss/big", big)]
want_wss = [("to-wss/big", big)]
if plain_got != want_plain or wss_got != want_wss:
    print("plain got %r, wss got %r" % ([(t, len(p)) for t, p in plain_got],
                                         [(t, len(p)) for t, p in wss_got]))
    sys.exit(1)
print("paho wss %s: both ways, %d bytes" % (version, len(big)))
