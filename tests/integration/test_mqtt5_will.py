"""MQTT 5.0 will: will delay interval, will properties, session expiry
shorter than the delay. Bounded: delays of 1-2 s."""

import time

import pytest

import mqtt5raw as m5
from mqtt5raw import Client5

# Will delays here are 1-2 s; a quiet period shorter than the delay shows
# the will is not sent at once, one longer shows it is not sent at all.
NOT_AT_ONCE_S = 0.5


def _watcher(port, cid="will-watch"):
    w = Client5(port)
    assert w.connect(cid).rc == 0
    w.subscribe([("will/#", 1)])
    return w


def _will_client(port, cid, delay, expiry=10, wprops=()):
    c = Client5(port)
    props = [(m5.SESSION_EXPIRY_INTERVAL, expiry)] if expiry else None
    ack = c.connect(cid, props=props, will=(
        "will/" + cid, b"gone-" + cid.encode(), 1, False,
        [(m5.WILL_DELAY_INTERVAL, delay)] + list(wprops)))
    assert ack.rc == 0
    return c


@pytest.mark.timeout(15)
def test_mqtt5_will_delay_sent_after_delay(broker):
    w = _watcher(broker.port)
    c = _will_client(broker.port, "wd1", 1)
    c.close()
    start = time.monotonic()
    w.expect_silence(NOT_AT_ONCE_S)
    m = w.expect_publish(timeout=5)
    took = time.monotonic() - start
    assert (m.topic, m.payload) == ("will/wd1", b"gone-wd1")
    assert took >= 0.9, took


@pytest.mark.timeout(15)
def test_mqtt5_will_delay_cancelled_on_reconnect(broker):
    w = _watcher(broker.port)
    c = _will_client(broker.port, "wd2", 2)
    since = broker.mark()
    c.close()
    # The broker has seen the close (the delay runs) before the reconnect.
    broker.wait_client_gone("wd2", since)
    c = Client5(broker.port)
    ack = c.connect("wd2", clean=False, props=[(m5.SESSION_EXPIRY_INTERVAL, 10)])
    assert ack.rc == 0 and ack.session_present
    w.expect_silence(3.0)  # past the 2 s delay: never sent


def test_mqtt5_will_without_delay_sent_at_once(broker):
    w = _watcher(broker.port)
    c = _will_client(broker.port, "wd0", 0)
    c.close()
    m = w.expect_publish(timeout=2)
    assert m.payload == b"gone-wd0"


@pytest.mark.timeout(15)
def test_mqtt5_will_sent_when_session_expires_before_delay(broker):
    # The will goes at the earlier of will delay and session end (3.1.3.2.2).
    w = _watcher(broker.port)
    c = _will_client(broker.port, "wd3", 30, expiry=1)
    c.close()
    m = w.expect_publish(timeout=5)
    assert m.payload == b"gone-wd3"


def test_mqtt5_will_not_sent_on_normal_disconnect(broker):
    w = _watcher(broker.port)
    c = _will_client(broker.port, "wdn", 0)
    c.send(m5.disconnect(0x00))
    c.expect_closed(2)
    c.close()
    w.expect_silence(0.7)


def test_mqtt5_will_sent_on_disconnect_with_will_message(broker):
    w = _watcher(broker.port)
    c = _will_client(broker.port, "wdw", 0)
    c.send(m5.disconnect(m5.DISCONNECT_WITH_WILL))
    m = w.expect_publish(timeout=2)
    assert m.payload == b"gone-wdw"


def test_mqtt5_will_properties_passed_through(broker):
    w = _watcher(broker.port)
    c = _will_client(broker.port, "wdp", 0, wprops=[
        (m5.USER_PROPERTY, ("why", "crash")), (m5.CONTENT_TYPE, "text/plain"),
        (m5.RESPONSE_TOPIC, "will/reply"), (m5.CORRELATION_DATA, b"\x01\x02")])
    c.close()
    m = w.expect_publish(timeout=2)
    assert m.props.all(m5.USER_PROPERTY) == [("why", "crash")]
    assert m.props.get(m5.CONTENT_TYPE) == "text/plain"
    assert m.props.get(m5.RESPONSE_TOPIC) == "will/reply"
    assert m.props.get(m5.CORRELATION_DATA) == b"\x01\x02"
    assert m5.WILL_DELAY_INTERVAL not in m.props.ids()
