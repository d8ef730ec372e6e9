"""A kite cluster behind HAProxy with PROXY protocol (docs/CLUSTER.md,
"In front: HAProxy"): three nodes on one nats-server, HAProxy in TCP mode
spreading clients round robin with send-proxy-v2, every node's listener
with enable_proxy_protocol 2. Each node must log the clients' own
addresses (127.0.0.2, 127.0.0.3), never HAProxy's, and messages must still
cross nodes."""

import os
import queue
import re
import subprocess

import pytest

import harness
from test_cluster import HAPROXY, NATS, Cluster, await_interest, drain

pytestmark = [
    pytest.mark.kite_only("the cluster is kite's own"),
    pytest.mark.skipif(not os.path.exists(NATS),
                       reason="needs nats-server (Debian package nats-server)"),
    pytest.mark.skipif(not os.path.exists(HAPROXY),
                       reason="needs haproxy (Debian package haproxy)"),
]


class BoundPaho:
    """A paho client connected from a chosen local address."""

    def __init__(self, port, client_id, source):
        import paho.mqtt.client as mqtt
        self.c = mqtt.Client(client_id=client_id, clean_session=True,
                             protocol=mqtt.MQTTv311)
        self.messages, connack = queue.Queue(), queue.Queue()
        self.c.on_connect = lambda cl, u, flags, rc: connack.put(rc)
        self.c.on_message = lambda cl, u, m: self.messages.put(m)
        self.c.connect("127.0.0.1", port, 60, bind_address=source)
        self.c.loop_start()
        assert connack.get(timeout=5) == 0
        self.local_port = self.c.socket().getsockname()[1]

    def subscribe(self, topic, qos):
        done = queue.Queue()
        self.c.on_subscribe = lambda *a: done.put(1)
        self.c.subscribe(topic, qos)
        done.get(timeout=5)

    def publish(self, topic, payload, qos=0):
        info = self.c.publish(topic, payload, qos)
        info.wait_for_publish(5)

    def get(self, timeout=5.0):
        return self.messages.get(timeout=timeout)

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


@pytest.mark.timeout(60)
def test_nodes_behind_haproxy_log_the_clients_own_addresses(cluster, tmp_path):
    cluster.start_nats()
    nodes = [cluster.start_node(n, extra="enable_proxy_protocol 2\nlog_type all\n")
             for n in ("a", "b", "c")]
    front = harness.free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n"
        "  timeout server 60s\n"
        "frontend mqtt\n  bind 127.0.0.1:%d\n  default_backend kite\n"
        "backend kite\n  balance roundrobin\n%s"
        % (front, "".join("  server %s 127.0.0.1:%d send-proxy-v2\n" % (n, b.port)
                          for n, b in zip("abc", nodes))))
    hp = subprocess.Popen([HAPROXY, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    cluster.others.append(hp)
    harness.wait_for(lambda: harness.listening(front), 5, what="haproxy listening")
    subs = [BoundPaho(front, "psub-%d" % i, "127.0.0.2") for i in range(3)]
    cluster.clients.extend(subs)
    for s in subs:
        s.subscribe("hpp/t", 1)
    # Round robin: one subscriber per node, each logged with its own port.
    for b in nodes:
        b.wait_output(r"New client connected from 127\.0\.0\.2:\d+ as psub-")
    logged = " ".join(b.output() for b in nodes)
    for s in subs:
        assert re.search(r"from 127\.0\.0\.2:%d as psub-" % s.local_port, logged)
    pub = BoundPaho(front, "ppub", "127.0.0.3")
    cluster.clients.append(pub)
    await_interest(pub, subs, "hpp/t")
    for i in range(10):
        pub.publish("hpp/t", b"%d" % i, qos=1)
    for s in subs:
        assert [m.payload for m in drain(s, 10)] == [b"%d" % i for i in range(10)]
    logged = " ".join(b.output() for b in nodes)
    assert re.search(r"New client connected from 127\.0\.0\.3:%d as ppub" % pub.local_port,
                     logged)
    assert not re.search(r"New client connected from 127\.0\.0\.1:", logged)
