"""PUBLISH and its QoS flows in both directions (MQTT 3.1.1 sections 3.3 -
3.7, 4.3, 4.4), queuing for offline sessions and redelivery."""

import pytest

import clients
import mqttraw
from mqttraw import RawClient


def _sub(port, cid, filters, clean=True):
    c = RawClient(port)
    c.connect(cid, clean=clean)
    c.subscribe(filters)
    return c


def _pub(port, cid="pub"):
    c = RawClient(port)
    c.connect(cid)
    return c


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_broker_acknowledges_client_publish_per_qos(broker, qos):
    with _pub(broker.port) as p:
        p.send(mqttraw.publish("ack/t", b"x", qos=qos, pid=0x1234))
        if qos == 0:
            p.expect_silence(0.3)
        elif qos == 1:
            a = p.expect(mqttraw.PUBACK)
            assert a.pid == 0x1234 and a.flags == 0 and len(a.body) == 2
        else:
            r = p.expect(mqttraw.PUBREC)
            assert r.pid == 0x1234 and r.flags == 0 and len(r.body) == 2
            p.send(mqttraw.pubrel(0x1234))
            c = p.expect(mqttraw.PUBCOMP)
            assert c.pid == 0x1234 and c.flags == 0 and len(c.body) == 2


def test_delivered_qos_is_min_of_publish_and_subscription(broker):
    subs = [_sub(broker.port, "s%d" % q, [("qos/t", q)]) for q in range(3)]
    with _pub(broker.port) as p:
        for pub_qos in range(3):
            p.publish("qos/t", b"p%d" % pub_qos, qos=pub_qos, pid=pub_qos + 1)
            for sub_qos, s in enumerate(subs):
                m = s.expect(mqttraw.PUBLISH)
                assert m.payload == b"p%d" % pub_qos
                assert m.qos == min(pub_qos, sub_qos), (pub_qos, sub_qos)
                assert not m.dup and not m.retain
                assert (m.pid is None) == (m.qos == 0)
                s.ack(m)


def test_broker_to_client_qos2_flow(broker):
    s = _sub(broker.port, "q2s", [("q2/t", 2)])
    with _pub(broker.port) as p:
        p.publish("q2/t", b"exactly-once", qos=2)
    m = s.expect(mqttraw.PUBLISH)
    assert m.qos == 2
    s.send(mqttraw.pubrec(m.pid))
    rel = s.expect(mqttraw.PUBREL)
    assert rel.pid == m.pid and rel.flags == 0x02
    s.send(mqttraw.pubcomp(m.pid))
    s.expect_silence(0.3)


def test_qos2_publish_delivered_to_subscribers_only_after_pubrel(broker):
    # The spec allows either moment; Mosquitto forwards on PUBREL.
    s = _sub(broker.port, "after-rel", [("rel/t", 2)])
    with _pub(broker.port) as p:
        p.send(mqttraw.publish("rel/t", b"x", qos=2, pid=9))
        p.expect(mqttraw.PUBREC)
        s.expect_silence(0.3)
        p.send(mqttraw.pubrel(9))
        p.expect(mqttraw.PUBCOMP)
    assert s.expect_publish().payload == b"x"


def test_qos2_duplicate_publish_before_pubrel_delivered_once(broker):
    s = _sub(broker.port, "once", [("once/t", 2)])
    with _pub(broker.port) as p:
        p.send(mqttraw.publish("once/t", b"one", qos=2, pid=42))
        assert p.expect(mqttraw.PUBREC).pid == 42
        p.send(mqttraw.publish("once/t", b"one", qos=2, pid=42, dup=True))
        assert p.expect(mqttraw.PUBREC).pid == 42
        p.send(mqttraw.pubrel(42))
        assert p.expect(mqttraw.PUBCOMP).pid == 42
    m = s.expect_publish()
    assert m.payload == b"one"
    s.expect_silence(0.5)


def test_default_inflight_window_is_20(broker):
    # max_inflight_messages defaults to 20: a subscriber that never acks gets
    # 20 QoS 1 messages; the rest wait in its queue.
    s = _sub(broker.port, "slow", [("win/t", 1)])
    with _pub(broker.port) as p:
        for i in range(25):
            p.publish("win/t", b"%d" % i, qos=1, pid=i + 1)
    got = s.recv_exactly(20)
    assert [g.payload for g in got] == [b"%d" % i for i in range(20)]
    s.send(mqttraw.puback(got[0].pid))
    m = s.expect(mqttraw.PUBLISH)
    assert m.payload == b"20"


def test_offline_session_queues_qos1_and_qos2_but_not_qos0(broker):
    # Mosquitto's default (queue_qos0_messages false): QoS 0 is not queued
    # for an offline client.
    s = _sub(broker.port, "away", [("away/t", 2)], clean=False)
    s.send(mqttraw.disconnect())
    s.expect_closed(2)
    with _pub(broker.port) as p:
        p.publish("away/t", b"q0", qos=0)
        p.publish("away/t", b"q1", qos=1, pid=1)
        p.publish("away/t", b"q2", qos=2, pid=2)
    with RawClient(broker.port) as s:
        assert s.connect("away", clean=False).session_present
        a = s.expect_publish()
        b = s.expect_publish()
        assert [(a.payload, a.qos), (b.payload, b.qos)] == [(b"q1", 1), (b"q2", 2)]
        s.expect_silence(0.3)


@pytest.mark.parametrize("how", ["socket_closed", "taken_over"])
def test_unacked_qos1_redelivered_with_dup_after_reconnect(broker, how):
    s = _sub(broker.port, "redo", [("redo/t", 1)], clean=False)
    with _pub(broker.port) as p:
        p.publish("redo/t", b"again", qos=1)
    first = s.expect(mqttraw.PUBLISH)
    assert not first.dup
    if how == "socket_closed":
        since = broker.mark()
        s.close()  # no PUBACK, no DISCONNECT
        broker.wait_client_gone("redo", since)
    s2 = RawClient(broker.port)
    assert s2.connect("redo", clean=False).session_present
    m = s2.expect(mqttraw.PUBLISH)
    assert (m.payload, m.qos, m.dup, m.pid) == (b"again", 1, True, first.pid)
    s2.send(mqttraw.puback(m.pid))
    s2.expect_silence(0.3)


def test_unacked_qos2_redelivered_then_pubrel_resent(broker):
    s = _sub(broker.port, "redo2", [("redo2/t", 2)], clean=False)
    with _pub(broker.port) as p:
        p.publish("redo2/t", b"two", qos=2)
    first = s.expect(mqttraw.PUBLISH)
    since = broker.mark()
    s.close()  # before PUBREC: the PUBLISH is sent again, DUP set
    broker.wait_client_gone("redo2", since)
    s = RawClient(broker.port)
    assert s.connect("redo2", clean=False).session_present
    m = s.expect(mqttraw.PUBLISH)
    assert (m.payload, m.qos, m.dup, m.pid) == (b"two", 2, True, first.pid)
    s.send(mqttraw.pubrec(m.pid))
    assert s.expect(mqttraw.PUBREL).pid == m.pid
    since = broker.mark()
    s.close()  # after PUBREC: the PUBREL is sent again, not the PUBLISH
    broker.wait_client_gone("redo2", since)
    s = RawClient(broker.port)
    assert s.connect("redo2", clean=False).session_present
    rel = s.expect(mqttraw.PUBREL)
    assert rel.pid == m.pid and rel.flags == 0x02
    s.send(mqttraw.pubcomp(m.pid))
    s.expect_silence(0.3)


def test_client_receives_own_publish_when_subscribed(broker):
    # MQTT 3.1.1 has no "no local": a subscriber gets its own messages.
    with RawClient(broker.port) as c:
        c.connect("self")
        c.subscribe([("self/t", 1)])
        c.publish("self/t", b"echo", qos=1)
        assert c.expect_publish().payload == b"echo"


def test_mosquitto_pub_to_mosquitto_sub(broker):
    # Readiness: a retained message tells us mosquitto_sub has subscribed.
    clients.mosquitto_pub(broker.port, "cli/t", "ready", qos=1, retain=True)
    sub = clients.mosquitto_sub_start(broker.port, "cli/t", count=2, qos=1)
    try:
        assert sub.stdout.readline() == "cli/t ready\n"
        clients.mosquitto_pub(broker.port, "cli/t", "live message", qos=1)
        out, err = sub.communicate(timeout=10)
        assert sub.returncode == 0, err
        assert out == "cli/t live message\n"
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_paho_publish_reaches_paho_subscriber(broker, qos):
    sub = clients.Paho(broker.port, "paho-sub-%d" % qos)
    pub = clients.Paho(broker.port, "paho-pub-%d" % qos)
    try:
        sub.subscribe("paho/q", qos)
        for i in range(5):
            pub.publish("paho/q", b"m%d" % i, qos=qos)
        got = [sub.get() for _ in range(5)]
        assert [(m.payload, m.qos, m.retain) for m in got] == [
            (b"m%d" % i, qos, False) for i in range(5)]
    finally:
        pub.stop()
        sub.stop()
