"""The outgoing QoS 1/2 window of a subscriber whose acks come out of
order (MQTT 3.1.1 section 4.6 asks for in-order acks only of QoS 1 flows
a client chose to order; acks may come in any order): what is acked is
gone, what is not is resent on reconnect in its original order with DUP
and its packet id, and the window keeps moving past an old message that
is never acked."""

import threading

import pytest

from mqttraw import PUBLISH, PUBREL, RawClient, puback, pubcomp, pubrec

CONF = "allow_anonymous true\nmax_inflight_messages {n}\n"


def _publish_many(port, topic, n, qos=1):
    with RawClient(port) as p:
        p.connect("win-pub")
        for i in range(n):
            p.publish(topic, b"m%d" % i, qos=qos, pid=i % 65535 + 1)


def test_out_of_order_acks_resend_only_the_rest_in_order(broker_factory):
    b = broker_factory(CONF.format(n=20))
    sub = RawClient(b.port)
    sub.connect("win-sub", clean=False)
    assert sub.subscribe([("win/t", 1)]) == [1]
    _publish_many(b.port, "win/t", 10)
    got = [sub.expect(PUBLISH) for _ in range(10)]
    assert [m.payload for m in got] == [b"m%d" % i for i in range(10)]
    # Every second message acked, newest first.
    for m in reversed(got[1::2]):
        sub.send(puback(m.pid))
    sub.ping()
    sub.close()
    sub = RawClient(b.port)
    assert sub.connect("win-sub", clean=False).session_present
    again = [sub.expect(PUBLISH) for _ in range(5)]
    assert [(m.payload, m.pid, m.dup) for m in again] == \
        [(m.payload, m.pid, True) for m in got[0::2]]
    for m in again:
        sub.send(puback(m.pid))
    sub.expect_silence(0.3)
    # The acked window holds nothing: new messages flow as before.
    _publish_many(b.port, "win/t", 3)
    assert [sub.expect_publish().payload for _ in range(3)] == \
        [b"m0", b"m1", b"m2"]
    sub.expect_silence(0.2)


@pytest.mark.timeout(60)
def test_window_moves_past_a_message_never_acked(broker_factory):
    # A window of 4, its oldest entry never acked: 3 slots keep flowing
    # for 600 messages while the stuck one stays in flight, and it is
    # the only one resent after a reconnect.
    b = broker_factory(CONF.format(n=4))
    sub = RawClient(b.port)
    sub.connect("stuck-sub", clean=False)
    assert sub.subscribe([("stuck/t", 1)]) == [1]
    n = 600
    t = threading.Thread(target=_publish_many, args=(b.port, "stuck/t", n))
    t.start()
    first = sub.expect(PUBLISH, timeout=10)
    assert first.payload == b"m0"
    for i in range(1, n):
        m = sub.expect(PUBLISH, timeout=10)
        assert m.payload == b"m%d" % i and not m.dup
        assert m.pid != first.pid
        sub.send(puback(m.pid))
    t.join()
    sub.ping()
    sub.close()
    sub = RawClient(b.port)
    assert sub.connect("stuck-sub", clean=False).session_present
    m = sub.expect(PUBLISH)
    assert (m.payload, m.pid, m.dup) == (b"m0", first.pid, True)
    sub.send(puback(m.pid))
    sub.expect_silence(0.3)


def test_qos2_out_of_order_pubrec_and_pubcomp(broker_factory):
    b = broker_factory(CONF.format(n=20))
    sub = RawClient(b.port)
    sub.connect("q2-sub", clean=False)
    assert sub.subscribe([("q2w/t", 2)]) == [2]
    _publish_many(b.port, "q2w/t", 6, qos=2)
    got = [sub.expect(PUBLISH) for _ in range(6)]
    assert [m.payload for m in got] == [b"m%d" % i for i in range(6)]
    # PUBREC for 5, 3, 1; PUBCOMP only for 3.
    for m in (got[5], got[3], got[1]):
        sub.send(pubrec(m.pid))
        assert sub.await_packet(PUBREL, m.pid).pid == m.pid
    sub.send(pubcomp(got[3].pid))
    sub.ping()
    sub.close()
    sub = RawClient(b.port)
    assert sub.connect("q2-sub", clean=False).session_present
    # In send order: PUBLISH (DUP) where no PUBREC came, PUBREL where one
    # did and no PUBCOMP followed.
    want = [(PUBLISH, got[0].pid), (PUBREL, got[1].pid),
            (PUBLISH, got[2].pid), (PUBLISH, got[4].pid),
            (PUBREL, got[5].pid)]
    seen = [sub.recv() for _ in want]
    assert [(p.type, p.pid) for p in seen] == want
    assert all(p.dup for p in seen if p.type == PUBLISH)
