"""A persistent session's messages move with it between kite nodes
(docs/CLUSTER.md, "Sessions"): a client whose session lives on node a
reconnects to node b (HAProxy's round robin makes that the common case).
Node b asks node a over NATS; a closes the old connection and sends the
session's queued messages, its in-flight window and its QoS 2 state; b's
CONNACK (session present) waits for them, bounded. Three NATS servers
with JetStream, three kite nodes, raw MQTT clients that control every
acknowledgement."""

import os
import signal
import time

import pytest

import mqttraw
from mqttraw import PUBLISH, PUBREL, PUBCOMP, PUBREC
from test_cluster import NATS, Cluster

pytestmark = [
    pytest.mark.kite_only("the cluster is kite's own"),
    pytest.mark.skipif(not os.path.exists(NATS),
                       reason="needs nats-server (Debian package nats-server)"),
]

# cluster.c's CLUSTER_HANDOVER_WAIT_MS
HANDOVER_WAIT_S = 2.5


@pytest.fixture
def nodes(tmp_path):
    cl = Cluster(tmp_path)
    cl.start_nats(3, jetstream=True)
    ns = [cl.start_node(n) for n in ("a", "b", "c")]
    for n in ns:
        n.wait_output(r"follows retained messages", timeout=30)
        n.wait_output(r"sends QoS 1/2 messages through JetStream", timeout=30)
    try:
        yield cl, ns
    finally:
        for n in ns:  # a node a test froze must be able to stop
            try:
                os.kill(n.pid, signal.SIGCONT)
            except OSError:
                pass
        cl.stop()


@pytest.fixture
def moving(nodes):
    """moving(n, qos=1) -> (a, b, c, sub, pub): the three nodes; client
    mover<n> with a persistent session on node a, subscribed to mv<n>/#
    at qos; client pub<n> on node c, whose messages are known to reach
    it (probed)."""
    _, (a, b, c) = nodes

    def setup(n, qos=1):
        sub = persistent_subscriber(a, "mover%d" % n, "mv%d/#" % n, qos)
        pub = raw(c)
        assert pub.connect("pub%d" % n).rc == 0
        await_route(pub, sub, "mv%d/probe" % n, qos)
        return a, b, c, sub, pub
    return setup


def raw(node, timeout=5.0):
    return mqttraw.RawClient(node.port, timeout=timeout)


def persistent_subscriber(node, client_id, filt, qos):
    """A client with a persistent session subscribed on node."""
    s = raw(node)
    assert s.connect(client_id, clean=False).rc == 0
    assert s.subscribe([(filt, qos)]) == [qos]
    return s


def await_route(pub, sub, topic, qos):
    """Probes from pub (another node) until sub gets one: the node's NATS
    interest reached every server. The probes are acknowledged."""
    deadline = time.monotonic() + 15
    while True:
        pub.publish(topic, b"probe", qos=1)
        try:
            pkt = sub.expect(PUBLISH, timeout=0.3)
            sub.ack(pkt)
            break
        except mqttraw.Timeout:
            assert time.monotonic() < deadline, "no route for %s" % topic
    time.sleep(0.5)
    for pkt in sub.recv_all(timeout=0.3):
        if pkt.type == PUBLISH:
            sub.ack(pkt)


def leave(c):
    c.send(mqttraw.disconnect())
    c.close()


def test_queued_qos1_messages_move_to_the_node_the_client_reconnects_to(moving):
    a, b, c, sub, pub = moving(1)
    leave(sub)
    time.sleep(1.0)  # the record says a holds the session, offline
    for i in range(50):
        pub.publish("mv1/t", b"%d" % i, qos=1, pid=i + 1)  # PUBACK each
    time.sleep(1.0)  # queued on a
    mark = b.mark()
    again = raw(b)
    ack = again.connect("mover1", clean=False)
    assert ack.rc == 0 and ack.session_present
    got = []
    for _ in range(50):
        pkt = again.expect(PUBLISH)
        assert not pkt.dup
        got.append(int(pkt.payload))
        again.ack(pkt)
    assert got == list(range(50))
    again.expect_silence(1.0)  # exactly once
    b.wait_output(r"Client mover1: 50 messages of its session taken over",
                  since=mark)
    # The subscription moved too: a new message arrives on b.
    pub.publish("mv1/t", b"after", qos=1, pid=99)
    assert again.expect(PUBLISH).payload == b"after"


def test_in_flight_qos1_messages_come_again_with_dup_on_the_new_node(moving):
    a, b, c, sub, pub = moving(2)
    for i in range(5):
        pub.publish("mv2/t", b"%d" % i, qos=1, pid=i + 1)
    inflight = [sub.expect(PUBLISH) for _ in range(5)]  # never acked
    assert [int(p.payload) for p in inflight] == list(range(5))
    mark = a.mark()
    leave(sub)
    # Node a must have seen the client go before the next five arrive
    # (else they are sent, and in flight too, when it moves).
    a.wait_output(r"Client mover2 .*disconnected", since=mark)
    for i in range(5, 10):
        pub.publish("mv2/t", b"%d" % i, qos=1, pid=i + 1)
    time.sleep(1.0)
    again = raw(b)
    ack = again.connect("mover2", clean=False)
    assert ack.rc == 0 and ack.session_present
    pkts = [again.expect(PUBLISH) for _ in range(10)]
    assert [int(p.payload) for p in pkts] == list(range(10))
    # Sent before, not acknowledged: again, with DUP and their packet ids.
    assert [p.dup for p in pkts[:5]] == [True] * 5
    assert [p.pid for p in pkts[:5]] == [p.pid for p in inflight]
    assert not any(p.dup for p in pkts[5:])
    for p in pkts:
        again.ack(p)
    again.expect_silence(1.0)


def test_qos2_state_moves_both_ways(nodes, moving):
    watcher = raw(nodes[1][2])  # on node c
    assert watcher.connect("watch3").rc == 0
    assert watcher.subscribe([("in3/x", 1)]) == [1]
    a, b, c, sub, pub = moving(3, qos=2)
    for i in range(4):
        pub.publish("mv3/t", b"%d" % i, qos=2, pid=i + 1)
    first = [sub.expect(PUBLISH) for _ in range(4)]
    assert all(p.qos == 2 for p in first)
    # 0 and 1: PUBREC sent, PUBREL received, PUBCOMP never sent.
    for p in first[:2]:
        sub.send(mqttraw.pubrec(p.pid))
        sub.await_packet(PUBREL, p.pid)
    # Incoming: the client published at QoS 2 on a, got PUBREC, and will
    # send PUBREL to the node it reconnects to.
    sub.send(mqttraw.publish("in3/x", b"released on b", qos=2, pid=77))
    sub.await_packet(PUBREC, 77)
    leave(sub)
    for i in range(4, 6):
        pub.publish("mv3/t", b"%d" % i, qos=2, pid=i + 1)
    time.sleep(1.0)
    again = raw(b)
    ack = again.connect("mover3", clean=False)
    assert ack.rc == 0 and ack.session_present
    # PUBREL for the two past PUBREC, then 2 and 3 again (DUP), then 4, 5.
    for p in first[:2]:
        rel = again.expect(PUBREL)
        assert rel.pid == p.pid
        again.send(mqttraw.pubcomp(p.pid))
    for p in first[2:]:
        pkt = again.expect(PUBLISH)
        assert (pkt.payload, pkt.dup, pkt.pid, pkt.qos) == (p.payload, True, p.pid, 2)
        again.ack(pkt)
    for i in range(4, 6):
        pkt = again.expect(PUBLISH)
        assert (int(pkt.payload), pkt.dup, pkt.qos) == (i, False, 2)
        again.ack(pkt)
    # The message b never saw the PUBLISH of goes out at PUBREL.
    again.send(mqttraw.pubrel(77))
    assert again.await_packet(PUBCOMP, 77).pid == 77
    m = watcher.expect(PUBLISH, timeout=10)
    assert m.payload == b"released on b"
    watcher.ack(m)
    again.expect_silence(1.0)


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_reconnect_when_the_old_node_is_gone_or_silent_waits_a_bounded_time(moving, how):
    """Node a dies (SIGKILL: NATS says nobody answers, b goes on at once)
    or stops answering (SIGSTOP: b waits its bound). Either way the client
    gets its session with its subscriptions. The messages queued on a die
    with it (documented); a frozen node's late answer is still taken."""
    a, b, c, sub, pub = moving(4)
    leave(sub)
    time.sleep(1.0)
    pub.publish("mv4/t", b"queued on a", qos=1, pid=1)
    time.sleep(0.5)
    if how == "killed":
        a.stop(signal.SIGKILL)
        time.sleep(0.5)  # NATS servers drop its subscriptions
    else:
        os.kill(a.pid, signal.SIGSTOP)
    mark = b.mark()
    again = raw(b, timeout=10)
    t0 = time.monotonic()
    ack = again.connect("mover4", clean=False)
    waited = time.monotonic() - t0
    assert ack.rc == 0 and ack.session_present
    assert waited < HANDOVER_WAIT_S + 1.0, waited
    if how == "killed":
        b.wait_output(r"Client mover4: the node that had its session is gone",
                      since=mark)
    else:
        assert waited >= HANDOVER_WAIT_S - 0.3, waited
        b.wait_output(r"client mover4: node [0-9a-f]+ did not hand its session "
                      r"over within 2500 ms", since=mark)
    # Subscriptions came from the record: no new SUBSCRIBE needed.
    deadline = time.monotonic() + 10
    while True:
        pub.publish("mv4/t", b"later", qos=1, pid=2)
        try:
            pkt = again.expect(PUBLISH, timeout=0.5)
            break
        except mqttraw.Timeout:
            assert time.monotonic() < deadline
    assert pkt.payload == b"later"
    again.ack(pkt)
    for pkt in again.recv_all(timeout=0.5):  # probes that came twice
        if pkt.type == PUBLISH:
            assert pkt.payload == b"later"
            again.ack(pkt)
    if how == "frozen":
        # Back, node a answers late: the message it held still comes,
        # queued into the session that went on without it.
        # (The probes a got while frozen come too: it queued them.)
        os.kill(a.pid, signal.SIGCONT)
        seen = []
        while b"queued on a" not in seen:
            pkt = again.expect(PUBLISH, timeout=10)
            seen.append(pkt.payload)
            again.ack(pkt)
        assert set(seen) <= {b"queued on a", b"later"}
        b.wait_output(r"client mover4: node [0-9a-f]+ handed its session over "
                      r"late: (\d+) of \1 messages queued", since=mark)


def test_a_client_still_connected_on_the_old_node_moves_with_its_window(moving):
    """The client connects to b while its connection to a is still open
    (a half-open socket, a NAT timeout): a closes it and hands the
    messages in flight on it to b."""
    a, b, c, sub, pub = moving(5)
    for i in range(3):
        pub.publish("mv5/t", b"%d" % i, qos=1, pid=i + 1)
    inflight = [sub.expect(PUBLISH) for _ in range(3)]  # never acked
    time.sleep(0.5)
    again = raw(b)
    ack = again.connect("mover5", clean=False)
    assert ack.rc == 0 and ack.session_present
    sub.expect_closed(timeout=5)
    pkts = [again.expect(PUBLISH) for _ in range(3)]
    assert [(p.payload, p.dup, p.pid) for p in pkts] == \
        [(p.payload, True, p.pid) for p in inflight]
    for p in pkts:
        again.ack(p)
    again.expect_silence(1.0)


def test_a_queue_larger_than_a_nats_message_moves_in_chunks(moving):
    """40 messages of 64 KiB (2.5 MiB) do not fit NATS's max_payload
    (1 MiB by default): the answer goes in several chunks, in order."""
    a, b, c, sub, pub = moving(6)
    leave(sub)
    time.sleep(1.0)
    body = lambda i: (b"%03d" % i) * (64 * 1024 // 3)
    for i in range(40):
        pub.publish("mv6/t", body(i), qos=1, pid=i + 1)
    time.sleep(1.0)
    mark = b.mark()
    again = raw(b, timeout=10)
    ack = again.connect("mover6", clean=False)
    assert ack.rc == 0 and ack.session_present
    for i in range(40):
        pkt = again.expect(PUBLISH)
        assert pkt.payload == body(i), i
        again.ack(pkt)
    again.expect_silence(1.0)
    b.wait_output(r"Client mover6: 40 messages of its session taken over",
                  since=mark)


def test_messages_moved_to_a_node_with_persistence_survive_its_kill9(tmp_path):
    """Node b has persistence: the session it took over (subscription,
    queued messages, in-flight window) is in its log as soon as the
    client is connected there, so a kill -9 of b loses none of it."""
    cl = Cluster(tmp_path)
    try:
        cl.start_nats(3, jetstream=True)
        (tmp_path / "pb").mkdir()
        pers = "persistence true\npersistence_location %s/\n" % (tmp_path / "pb")
        a = cl.start_node("a")
        b = cl.start_node("b", extra=pers)
        c = cl.start_node("c")
        for n in (a, b, c):
            n.wait_output(r"sends QoS 1/2 messages through JetStream", timeout=30)
        sub = persistent_subscriber(a, "keeper", "kp/#", 1)
        pub = raw(c)
        assert pub.connect("pubk").rc == 0
        await_route(pub, sub, "kp/probe", 1)
        leave(sub)
        time.sleep(1.0)
        for i in range(20):
            pub.publish("kp/t", b"%d" % i, qos=1, pid=i + 1)
        time.sleep(1.0)
        again = raw(b)
        ack = again.connect("keeper", clean=False)
        assert ack.rc == 0 and ack.session_present
        first = [again.expect(PUBLISH) for _ in range(5)]  # in flight, unacked
        assert [int(p.payload) for p in first] == list(range(5))
        again.close()  # vanishes without acking
        time.sleep(0.5)
        b.stop(signal.SIGKILL)
        b2 = cl.start_node("b", extra=pers)
        b2.wait_output(r"sends QoS 1/2 messages through JetStream", timeout=30)
        back = raw(b2)
        ack = back.connect("keeper", clean=False)
        assert ack.rc == 0 and ack.session_present
        got = []
        for _ in range(20):
            pkt = back.expect(PUBLISH)
            # the five read before the kill were in flight: DUP (the
            # rest may have been sent, unread, too)
            assert pkt.dup or int(pkt.payload) >= 5, pkt
            got.append(int(pkt.payload))
            back.ack(pkt)
        assert got == list(range(20))
        back.expect_silence(1.0)
        # and the subscription was logged too: a new message arrives
        await_route(pub, back, "kp/probe", 1)
    finally:
        cl.stop()
