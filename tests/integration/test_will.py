"""Will messages (MQTT 3.1.1 section 3.1.2.5 - 3.1.2.7)."""

import pytest

import harness
import mqttraw
from mqttraw import RawClient


def _watcher(broker, qos=2):
    w = RawClient(broker.port)
    w.connect("will-watcher")
    w.subscribe([("will/#", qos)])
    return w


def test_will_sent_on_abnormal_close(broker):
    w = _watcher(broker)
    c = RawClient(broker.port)
    c.connect("dies", will=("will/dies", b"bye", 0, False))
    c.close()  # no DISCONNECT
    m = w.expect_publish()
    assert (m.topic, m.payload, m.retain) == ("will/dies", b"bye", False)


@pytest.mark.timeout(20)
def test_will_sent_on_keepalive_timeout(broker):
    _, latest = harness.keepalive_close_window(broker.flavour, 1)
    w = _watcher(broker)
    c = RawClient(broker.port)
    c.connect("silent", keepalive=1, will=("will/silent", b"timeout", 1, False))
    m = w.expect_publish(timeout=latest)
    assert (m.topic, m.payload) == ("will/silent", b"timeout")
    c.expect_closed(2)


@pytest.mark.parametrize("packet", [b"\x00\x00", b"\xf0\x00", b"\x20\x02\x00\x00"],
                         ids=["reserved-type-0", "auth-in-3.1.1", "connack-from-client"])
def test_will_sent_when_a_client_sends_a_packet_type_it_may_not(broker, packet):
    # Mosquitto 2.0.11 publishes it: the connection ends without DISCONNECT.
    w = _watcher(broker)
    c = RawClient(broker.port)
    c.connect("rogue", will=("will/rogue", b"bye", 0, False))
    c.send(packet)
    c.expect_closed(2)
    m = w.expect_publish()
    assert (m.topic, m.payload) == ("will/rogue", b"bye")


def test_will_not_sent_on_disconnect(broker):
    w = _watcher(broker)
    c = RawClient(broker.port)
    c.connect("polite", will=("will/polite", b"never", 1, False))
    c.send(mqttraw.disconnect())
    c.expect_closed(2)
    w.expect_silence(0.5)


def test_will_retain_flag_honoured(broker):
    w = _watcher(broker)
    c = RawClient(broker.port)
    c.connect("ret", will=("will/ret", b"kept", 1, True))
    c.close()
    live = w.expect_publish()  # the will is out: now it is retained
    assert (live.payload, live.retain) == (b"kept", False)
    late = RawClient(broker.port)
    late.connect("late")
    late.subscribe([("will/ret", 1)])
    m = late.expect_publish()
    assert (m.payload, m.retain, m.qos) == (b"kept", True, 1)


@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_qos_honoured(broker, will_qos):
    w = _watcher(broker, qos=2)
    c = RawClient(broker.port)
    c.connect("wq", will=("will/q", b"q", will_qos, False))
    c.close()
    m = w.expect_publish()
    assert m.qos == will_qos


def test_will_sent_when_session_taken_over(broker):
    # Mosquitto 2.0.11 publishes the old connection's will when the same
    # client id connects again (the old connection ends without DISCONNECT).
    w = _watcher(broker)
    old = RawClient(broker.port)
    old.connect("taken", will=("will/taken", b"old", 0, False))
    new = RawClient(broker.port)
    assert new.connect("taken").rc == 0
    m = w.expect_publish()
    assert (m.topic, m.payload) == ("will/taken", b"old")
    old.expect_closed(2)


@pytest.mark.parametrize("clean1,clean2,will", [
    (True, True, True), (False, True, True), (True, False, True),
    (False, False, False)])
def test_will_on_takeover_only_if_a_side_is_clean(broker, clean1, clean2, will):
    # Mosquitto 2.0.11 (its 07-will-takeover): the old connection's will
    # is published unless both connections use a persistent session (the
    # session goes on, so the client did not go).
    w = _watcher(broker)
    old = RawClient(broker.port)
    assert old.connect("tk", clean=clean1, will=("will/tk", b"old", 0, False)).rc == 0
    new = RawClient(broker.port)
    ack = new.connect("tk", clean=clean2)
    assert ack.rc == 0
    old.expect_closed(2)
    if will:
        m = w.expect_publish()
        assert (m.topic, m.payload) == ("will/tk", b"old")
    w.expect_silence(0.7)


def test_will_over_message_size_limit_refused(broker_factory):
    # Mosquitto refuses the CONNECT (3.1.1: CONNACK 5, not authorised).
    b = broker_factory("allow_anonymous true\nmessage_size_limit 1\n")
    w = _watcher(b)
    c = RawClient(b.port)
    assert c.connect("big", will=("will/big", b"AB", 0, False)).rc == 5
    c.expect_closed(2)
    c = RawClient(b.port)
    assert c.connect("big", will=("will/big", b"A", 0, False)).rc == 0
    c.close()
    assert w.expect_publish().payload == b"A"
