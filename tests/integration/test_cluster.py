"""A kite cluster on NATS (docs/CLUSTER.md): nats-server (a 3-server NATS
cluster with JetStream where it matters), two or three kite nodes on
loopback ports, real MQTT clients connected to different nodes.
Everything stops by itself; without nats-server the tests skip."""

import os
import queue
import shutil
import signal
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

import harness
import mqttraw
from clients import Paho

NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

pytestmark = [
    pytest.mark.kite_only("the cluster is kite's own"),
    pytest.mark.skipif(not os.path.exists(NATS),
                       reason="needs nats-server (Debian package nats-server)"),
]


class Nats:
    """One nats-server process."""

    def __init__(self, tmp, name, port, cport, routes, jetstream):
        self.port = port
        self.dir = tmp / name
        self.dir.mkdir(exist_ok=True)
        cmd = [NATS, "-a", harness.HOST, "-p", str(port), "-n", name]
        if cport:
            cmd += ["--cluster_name", "kite-test",
                    "--cluster", "nats://127.0.0.1:%d" % cport,
                    "--routes", ",".join("nats://127.0.0.1:%d" % r for r in routes)]
        if jetstream:
            cmd += ["-js", "-sd", str(self.dir / "js")]
        self.cmd = cmd
        self.start()

    def start(self):
        """Starts (or, after stop, starts again with the same store)."""
        self.log = open(self.dir / "nats.log", "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        harness.wait_for(lambda: harness.listening(self.port) or self.proc.poll() is not None,
                         5.0, what="nats-server listening on %d" % self.port)
        assert self.proc.poll() is None, (self.dir / "nats.log").read_text()

    def url(self):
        return "nats://127.0.0.1:%d" % self.port

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Cluster:
    """NATS servers and kite nodes started by one test, stopped at its end."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.nats = []
        self.nodes = []
        self.clients = []
        self.others = []

    def start_nats(self, n=1, jetstream=False):
        ports = [harness.free_port() for _ in range(n)]
        cports = [harness.free_port() for _ in range(n)] if n > 1 else [None]
        for i in range(n):
            routes = [c for j, c in enumerate(cports) if j != i] if n > 1 else []
            self.nats.append(Nats(self.tmp, "nats%d" % i, ports[i], cports[i],
                                  routes, jetstream))
        if n > 1:
            # Routes up: each server sees the others.
            time.sleep(1.0)
        return self.nats

    def urls(self):
        return ",".join(s.url() for s in self.nats)

    def start_node(self, name, extra="", url=None):
        port = harness.free_port()
        d = self.tmp / name
        d.mkdir(exist_ok=True)
        text = ("listener %d 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n"
                "cluster_nats_url %s\ncluster_node_name %s\nshards 2\n%s"
                % (port, url or self.urls(), name, extra))
        b = harness.Broker(harness.broker_bin(), "kite", d, text, port=port)
        self.nodes.append(b)
        b.wait_output(r"cluster: node %s" % name)
        return b

    def client(self, node, **kw):
        c = Paho(node.port, **kw)
        self.clients.append(c)
        return c

    def stop(self):
        for c in self.clients:
            try:
                c.stop()
            except Exception:
                pass
        for b in self.nodes:
            if not b.stopped:
                b.stop()
        for p in self.others:
            if p.poll() is None:
                p.kill()
                p.wait()
        for s in self.nats:
            s.stop()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def await_interest(pub, subs, topic, timeout=10.0):
    """Publishes probes on topic from pub until every client in subs got
    one: the NATS subscriptions of their nodes have reached every NATS
    server. Then drops whatever probes are still on their way."""
    if not isinstance(subs, (list, tuple)):
        subs = [subs]
    deadline = time.monotonic() + timeout
    waiting = list(subs)
    while waiting:
        pub.publish(topic, b"probe")
        time.sleep(0.05)
        for s in list(waiting):
            if not s.messages.empty():
                waiting.remove(s)
        assert time.monotonic() < deadline, "no route for %s" % topic
    time.sleep(0.3)
    for s in subs:
        while not s.messages.empty():
            s.messages.get_nowait()


def drain(c, n, timeout=5.0):
    return [c.get(timeout) for _ in range(n)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("jetstream,persist", [(False, False), (True, False), (True, True)],
                         ids=["core", "jetstream", "jetstream-persistence"])
def test_publish_on_one_node_reaches_subscribers_on_the_others_at_each_qos(
        cluster, tmp_path, jetstream, persist):
    cluster.start_nats(jetstream=jetstream)
    # With persistence the acks wait for the disk and for JetStream.
    extra = lambda n: ("persistence true\npersistence_location %s/\n" % (tmp_path / n)
                       if persist else "")
    a = cluster.start_node("a", extra=extra("a"))
    b = cluster.start_node("b", extra=extra("b"))
    c = cluster.start_node("c", extra=extra("c"))
    if jetstream:
        # QoS 1/2 then go through the stream, their acks held until it
        # stored them (the publishes below wait for PUBACK / PUBCOMP).
        for n in (a, b, c):
            n.wait_output(r"sends QoS 1/2 messages through JetStream", timeout=20)
    sb = cluster.client(b)
    sc = cluster.client(c)
    sb.subscribe("x/+/t", qos=2)
    sc.subscribe("x/#", qos=2)
    pub = cluster.client(a)
    await_interest(pub, [sb, sc], "x/p/t")
    for qos in (0, 1, 2):
        pub.publish("x/q%d/t" % qos, b"m%d" % qos, qos=qos)
        for s in (sb, sc):
            m = s.get()
            assert (m.topic, m.payload, m.qos) == ("x/q%d/t" % qos, b"m%d" % qos, qos)
    # 'x/#' matches 'x' itself; 'x/+/t' does not.
    pub.publish("x", b"parent", qos=1)
    assert sc.get().payload == b"parent"
    with pytest.raises(Exception):
        sb.get(timeout=0.5)
    if jetstream:
        return
    # This NATS has no JetStream: the log says what QoS 1/2 get instead.
    a.wait_output(r"no JetStream stream for QoS 1/2 messages .*: between nodes "
                  r"they are sent at most once", timeout=10)


@pytest.mark.timeout(40)
def test_overlapping_filters_on_a_node_deliver_a_message_once(cluster):
    cluster.start_nats()
    a = cluster.start_node("a")
    b = cluster.start_node("b")
    s1 = cluster.client(b)
    s2 = cluster.client(b)
    s1.subscribe("o/#", qos=1)
    s2.subscribe("o/+", qos=1)
    s2.subscribe("o/k", qos=1)
    pub = cluster.client(a)
    await_interest(pub, [s1, s2], "o/k")
    for i in range(20):
        pub.publish("o/k", b"%d" % i, qos=1)
    assert [m.payload for m in drain(s1, 20)] == [b"%d" % i for i in range(20)]
    assert [m.payload for m in drain(s2, 20)] == [b"%d" % i for i in range(20)]
    time.sleep(0.5)
    assert s1.messages.empty() and s2.messages.empty()


@pytest.mark.timeout(40)
def test_topics_with_characters_nats_reserves_cross_nodes_intact(cluster):
    cluster.start_nats()
    a = cluster.start_node("a")
    b = cluster.start_node("b")
    sub = cluster.client(b)
    sub.subscribe("r.s/*/>/%/ sp/#", qos=1)
    sub.subscribe("e//+", qos=1)
    pub = cluster.client(a)
    await_interest(pub, sub, "r.s/*/>/%/ sp")
    pub.publish("r.s/*/>/%/ sp/z.z", b"odd", qos=1)
    m = sub.get()
    assert (m.topic, m.payload) == ("r.s/*/>/%/ sp/z.z", b"odd")
    await_interest(pub, sub, "e//p")
    pub.publish("e//", b"empty", qos=1)  # '+' matches an empty level
    m = sub.get()
    assert (m.topic, m.payload) == ("e//", b"empty")
    # A different level is not a match: 'r.s' is one level, not 'r'/'s'.
    pub.publish("r/s/*/>/%/ sp", b"no", qos=1)
    with pytest.raises(Exception):
        sub.get(timeout=0.5)


@pytest.mark.timeout(40)
def test_order_per_publisher_per_topic_is_kept_across_nodes(cluster):
    cluster.start_nats()
    a = cluster.start_node("a")
    b = cluster.start_node("b")
    sub = cluster.client(b)
    sub.subscribe("ord/#", qos=1)
    pub = cluster.client(a)
    await_interest(pub, sub, "ord/x")
    n = 500
    for i in range(n):
        pub.c.publish("ord/%d" % (i % 3), b"%d" % i, qos=1)
    got = drain(sub, n, timeout=10)
    for t in range(3):
        seq = [int(m.payload) for m in got if m.topic == "ord/%d" % t]
        assert seq == [i for i in range(n) if i % 3 == t]


@pytest.mark.timeout(40)
def test_only_nodes_with_interest_receive_and_unsubscribe_stops_it(cluster):
    cluster.start_nats()
    a = cluster.start_node("a")
    b = cluster.start_node("b")
    sub = cluster.client(b)
    sub.subscribe("int/t", qos=0)
    pub = cluster.client(a)
    await_interest(pub, sub, "int/t")
    sub.c.unsubscribe("int/t")
    time.sleep(0.5)
    # The NATS server counts what it sent to node b's connection: with no
    # interest left, b's NATS subscription is gone, so nothing goes to b.
    pub.publish("int/t", b"after", qos=1)
    with pytest.raises(Exception):
        sub.get(timeout=0.5)


@pytest.mark.timeout(40)
def test_session_taken_over_on_another_node_closes_the_old_connection(cluster):
    cluster.start_nats()
    a = cluster.start_node("a")
    b = cluster.start_node("b")
    # A raw client: it does not reconnect by itself once closed.
    old = mqttraw.RawClient(a.port)
    old.send(mqttraw.connect("roamer"))
    old.expect(mqttraw.CONNACK)
    mark = a.mark()
    new = cluster.client(b, client_id="roamer")
    old.expect_closed(timeout=5)
    a.wait_output(r"Client roamer connected to another node", since=mark)
    # The new connection is not kicked in return.
    time.sleep(0.5)
    assert not new.disconnected.is_set()
    # And the old node has no session of that id left: a message for
    # the new connection arrives once.
    new.subscribe("roam/t", qos=1)
    pub = cluster.client(a)
    await_interest(pub, new, "roam/t")
    pub.publish("roam/t", b"here", qos=1)
    assert new.get().payload == b"here"


@pytest.mark.timeout(40)
def test_a_node_starts_and_serves_its_clients_while_nats_is_down(cluster, tmp_path):
    port = harness.free_port()
    a = cluster.start_node("a", url="nats://127.0.0.1:%d" % port)
    a.wait_output(r"not reachable yet")
    c = cluster.client(a)
    c.subscribe("local/t", qos=1)
    c.publish("local/t", b"still works", qos=1)
    assert c.get().payload == b"still works"
    # NATS comes up: the node connects and its interest reaches it.
    cluster.nats.append(Nats(tmp_path, "late", port, None, [], False))
    a.wait_output(r"connected to NATS", timeout=10)
    b = cluster.start_node("b", url="nats://127.0.0.1:%d" % port)
    pub = cluster.client(b)
    await_interest(pub, c, "local/t")


@pytest.mark.timeout(60)
def test_retained_messages_are_cluster_wide_and_loaded_by_a_new_node(cluster):
    cluster.start_nats(3, jetstream=True)
    a = cluster.start_node("a")
    b = cluster.start_node("b")
    a.wait_output(r"follows retained messages", timeout=20)
    b.wait_output(r"follows retained messages", timeout=20)
    pub = cluster.client(a)
    pub.publish("ret/one", b"kept", qos=1, retain=True)
    pub.publish("ret/two", b"gone", qos=1, retain=True)
    pub.publish("ret/two", b"", qos=1, retain=True)  # cleared

    def retained_on(node, flt, want):
        c = cluster.client(node)
        c.subscribe(flt, qos=1)
        got = []
        try:
            while len(got) < want + 1:
                got.append(c.get(timeout=0.7))
        except Exception:
            pass
        c.stop()
        return sorted((m.topic, m.payload, m.retain) for m in got)

    harness.wait_for(lambda: retained_on(b, "ret/#", 1) == [("ret/one", b"kept", True)],
                     10, what="retained message on node b")
    # A node that starts now loads them from the stream.
    c = cluster.start_node("c")
    c.wait_output(r"follows retained messages", timeout=20)
    harness.wait_for(lambda: retained_on(c, "ret/#", 1) == [("ret/one", b"kept", True)],
                     10, what="retained message on the new node c")


@pytest.mark.timeout(40)
def test_shared_subscription_gives_each_message_to_one_member_across_nodes(cluster):
    cluster.start_nats()
    a = cluster.start_node("a")
    b = cluster.start_node("b")
    c = cluster.start_node("c")
    ma = cluster.client(a)
    mb = cluster.client(b)
    ma.subscribe("$share/g/sh/+", qos=1)
    mb.subscribe("$share/g/sh/+", qos=1)
    # An ordinary subscriber sees every message, once.
    watch = cluster.client(b)
    watch.subscribe("sh/+", qos=1)
    pub = cluster.client(c)
    await_interest(pub, watch, "sh/p")
    time.sleep(0.5)
    for m in (ma, mb):
        while not m.messages.empty():
            m.messages.get_nowait()
    n = 60
    for i in range(n):
        pub.publish("sh/t", b"%d" % i, qos=1)
    assert sorted(int(m.payload) for m in drain(watch, n)) == list(range(n))
    time.sleep(1.0)
    got_a = [int(ma.messages.get_nowait().payload) for _ in range(ma.messages.qsize())]
    got_b = [int(mb.messages.get_nowait().payload) for _ in range(mb.messages.qsize())]
    assert sorted(got_a + got_b) == list(range(n)), (got_a, got_b)
    assert got_a and got_b, "NATS queue group did not balance: %s / %s" % (got_a, got_b)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.exists(HAPROXY), reason="needs haproxy (Debian package haproxy)")
def test_clients_through_haproxy_round_robin_reach_each_other(cluster, tmp_path):
    cluster.start_nats()
    nodes = [cluster.start_node(n) for n in ("a", "b", "c")]
    front = harness.free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n"
        "  timeout server 60s\n"
        "frontend mqtt\n  bind 127.0.0.1:%d\n  default_backend kite\n"
        "backend kite\n  balance roundrobin\n%s"
        % (front, "".join("  server %s 127.0.0.1:%d\n" % (n, b.port)
                          for n, b in zip("abc", nodes))))
    hp = subprocess.Popen([HAPROXY, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    cluster.others.append(hp)
    harness.wait_for(lambda: harness.listening(front), 5, what="haproxy listening")
    subs = [Paho(front) for _ in range(3)]
    cluster.clients.extend(subs)
    for s in subs:
        s.subscribe("hp/t", qos=1)
    # Round robin: one subscriber per node.
    for b in nodes:
        b.wait_output(r"New client connected")
    pub = Paho(front)
    cluster.clients.append(pub)
    await_interest(pub, subs, "hp/t")
    for i in range(10):
        pub.publish("hp/t", b"%d" % i, qos=1)
    for s in subs:
        assert [m.payload for m in drain(s, 10)] == [b"%d" % i for i in range(10)]


@pytest.mark.timeout(60)
def test_a_node_killed_does_not_disturb_the_others(cluster):
    cluster.start_nats(3)
    a = cluster.start_node("a")
    b = cluster.start_node("b")
    c = cluster.start_node("c")
    sub = cluster.client(c)
    sub.subscribe("k/#", qos=1)
    pub = cluster.client(a)
    doomed = cluster.client(b)
    doomed.subscribe("k/#", qos=1)
    await_interest(pub, [sub, doomed], "k/p")
    b.stop(signal.SIGKILL)
    acked = []
    for i in range(200):
        pub.publish("k/t", b"%d" % i, qos=1)  # waits for PUBACK
        acked.append(i)
    got = [int(m.payload) for m in drain(sub, len(acked), timeout=10)]
    assert got == acked


class AckCounter:
    """A QoS 1 publisher that notes which payloads got their PUBACK: the
    promise the broker made. A message whose PUBACK never came (its
    connection closed) is not counted. No lock of ours is held around
    paho's calls (paho calls on_publish under its own locks)."""

    def __init__(self, port, topic):
        self.topic = topic
        self.acked_mids = set()
        self.mids = {}
        self.sent = 0
        self.stop_ev = threading.Event()
        self.c = mqtt.Client(client_id="ackcounter", clean_session=True,
                             protocol=mqtt.MQTTv311)
        self.c.on_publish = lambda c, u, mid: self.acked_mids.add(mid)
        self.c.max_inflight_messages_set(50)
        self.c.connect(harness.HOST, port, 30)
        self.c.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        # Packet ids are not reused below 65535 messages: one mid, one payload.
        while not self.stop_ev.is_set() and i < 60000:
            info = self.c.publish(self.topic, b"%d" % i, qos=1)
            self.mids[info.mid] = i
            self.sent = i + 1
            i += 1
            time.sleep(0.004)

    @property
    def acked(self):
        return {i for mid, i in list(self.mids.items()) if mid in self.acked_mids}

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_ev.set()
        self.thread.join(5)
        # Whatever is still in flight gets its chance to be acknowledged.
        deadline = time.monotonic() + 35
        while len(self.acked) < len(self.mids) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.timeout(150)
def test_acknowledged_qos1_messages_survive_a_nats_server_and_then_a_kite_node_killed(cluster):
    """Issue 17's accounting: under QoS 1 load, the NATS server the
    subscriber's node is linked to dies, then a kite node dies; every
    message the publisher got a PUBACK for reaches the subscriber on a
    surviving node (duplicates allowed)."""
    cluster.start_nats(3, jetstream=True)
    a = cluster.start_node("a")
    b = cluster.start_node("b")
    # Node c is given one server, so the test knows which to kill; it
    # learns the others from the NATS cluster and reconnects to them.
    c = cluster.start_node("c", url=cluster.nats[0].url())
    for n in (a, b, c):
        n.wait_output(r"sends QoS 1/2 messages through JetStream", timeout=30)
    sub = cluster.client(c)
    sub.subscribe("load/#", qos=1)
    doomed = cluster.client(b)
    doomed.subscribe("load/#", qos=1)
    probe = cluster.client(a)
    await_interest(probe, [sub, doomed], "load/probe")
    pub = AckCounter(a.port, "load/t")
    pub.start()
    time.sleep(1.5)
    # The NATS server node c (the subscriber's) is linked to dies.
    mark = c.mark()
    cluster.nats[0].stop(signal.SIGKILL)
    c.wait_output(r"connected to NATS", since=mark, timeout=10)
    time.sleep(2.0)
    # Then a kite node with a subscriber.
    b.stop(signal.SIGKILL)
    time.sleep(2.0)
    pub.stop()
    acked = set(pub.acked)
    assert len(acked) > 200, "too few acknowledged (%d of %d sent)" % (len(acked), pub.sent)
    # JetStream answers again once its servers elected new leaders (some
    # seconds); node c then replays what its broken link missed.
    c.wait_output(r"replayed the QoS 1/2 messages of its outage \(complete", since=mark,
                  timeout=40)
    got = set()
    deadline = time.monotonic() + 30
    while not acked <= got and time.monotonic() < deadline:
        try:
            got.add(int(sub.get(timeout=1.0).payload))
        except queue.Empty:
            pass
    lost = sorted(acked - got)
    assert not lost, "%d acknowledged messages lost (of %d acked, %d sent): %s" % (
        len(lost), len(acked), pub.sent, lost[:20])


@pytest.mark.timeout(120)
def test_a_qos1_puback_waits_until_jetstream_stored_the_message(cluster):
    """Two NATS servers of three down: JetStream has no majority and stores
    nothing, so the publisher gets no PUBACK (its message still reaches the
    other node live); once they are back, the stored message is
    acknowledged."""
    cluster.start_nats(3, jetstream=True)
    a = cluster.start_node("a", url=cluster.nats[0].url())
    b = cluster.start_node("b", url=cluster.nats[0].url())
    for n in (a, b):
        n.wait_output(r"sends QoS 1/2 messages through JetStream", timeout=30)
    sub = cluster.client(b)
    sub.subscribe("hold/#", qos=1)
    probe = cluster.client(a)
    await_interest(probe, sub, "hold/probe")
    # Stored and acknowledged while JetStream has its majority.
    pub = mqttraw.RawClient(a.port)
    pub.send(mqttraw.connect("holder"))
    pub.expect(mqttraw.CONNACK)
    pub.send(mqttraw.publish("hold/t", b"before", qos=1, pid=1))
    pub.await_packet(mqttraw.PUBACK, pid=1, timeout=10)
    for s in cluster.nats[1:]:
        s.stop(signal.SIGKILL)
    time.sleep(1.0)
    pub.send(mqttraw.publish("hold/t", b"during", qos=1, pid=2))
    assert sub.get(timeout=10).payload == b"before"
    assert sub.get(timeout=10).payload == b"during"
    pub.expect_silence(timeout=4.0)
    for s in cluster.nats[1:]:
        s.start()
    pub.await_packet(mqttraw.PUBACK, pid=2, timeout=25)


@pytest.mark.timeout(60)
def test_a_persistent_session_taken_over_on_another_node_keeps_its_subscriptions(cluster):
    """A client with a persistent session subscribes on node a, goes
    away, and connects to node b: b knows its subscriptions (from the
    stream KITE_SESSIONS), says session present, and delivers without a
    new SUBSCRIBE. A clean session then clears the record."""
    cluster.start_nats(3, jetstream=True)
    a = cluster.start_node("a")
    b = cluster.start_node("b")
    c = cluster.start_node("c")
    for n in (a, b, c):
        n.wait_output(r"follows retained messages", timeout=30)
    first = cluster.client(a, client_id="roamer2", clean=False)
    assert not first.session_present
    first.subscribe("carry/+", qos=1)
    first.subscribe("carry2/#", qos=1)
    first.stop()
    time.sleep(1.0)
    mark = b.mark()
    second = cluster.client(b, client_id="roamer2", clean=False)
    assert second.session_present
    b.wait_output(r"Client roamer2: session taken over from another node of the "
                  r"cluster, 2 subscriptions", since=mark)
    pub = cluster.client(c)
    await_interest(pub, second, "carry/p")
    pub.publish("carry2/x/y", b"no resubscribe", qos=1)
    m = second.get()
    assert (m.topic, m.payload) == ("carry2/x/y", b"no resubscribe")
    second.stop()
    # A clean start ends the session cluster-wide: the next persistent
    # connect elsewhere starts empty.
    clean = cluster.client(c, client_id="roamer2", clean=True)
    clean.stop()
    time.sleep(1.0)
    third = cluster.client(a, client_id="roamer2", clean=False)
    assert not third.session_present
