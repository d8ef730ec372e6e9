"""A short-lived paho-mqtt client, run INSIDE the VM by
guest_ktls_shortlived.sh: connects with a client certificate, publishes
one QoS 1 message as soon as it has its CONNACK, disconnects as soon as the
PUBACK is in, N times in a row. Exit 0 iff every round completed.

    python3 paho_shortlived.py PORT CA CERT KEY TLS_VERSION TOPIC N"""
import ssl
import sys
import threading

import paho.mqtt.client as mqtt

port, ca, cert, key, version, topic, n = sys.argv[1:8]
tls = ssl.PROTOCOL_TLS_CLIENT
for i in range(int(n)):
    done = threading.Event()
    c = mqtt.Client(client_id="paho-short-%d" % i, protocol=mqtt.MQTTv311)
    c.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=tls)
    ctx = c._ssl_context
    if version == "tlsv1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    c.on_connect = lambda cl, u, f, rc: cl.publish(topic, "paho %d" % i, qos=1) if rc == 0 else done.set()
    c.on_publish = lambda cl, u, mid: (cl.disconnect(), done.set())
    c.connect("localhost", int(port), 30)
    c.loop_start()
    ok = done.wait(20)
    c.loop_stop()
    if not ok:
        print("paho round %d: no PUBACK" % i)
        sys.exit(1)
print("paho: %s rounds" % n)
