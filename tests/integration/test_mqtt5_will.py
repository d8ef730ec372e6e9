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


def test_mqtt5_will_properties_keep_the_clients_order(broker):
    # Mosquitto forwards a will's properties in the order the client sent
    # them, leaving out the will delay wherever it was (its suite's
    # 07-will-properties compares the bytes); a PUBLISH's likewise.
    w = _watcher(broker.port)
    sent = [(m5.USER_PROPERTY, ("key1", "value1")), (m5.RESPONSE_TOPIC, "response/topic"),
            (m5.CORRELATION_DATA, b"data"), (m5.PAYLOAD_FORMAT_INDICATOR, 1),
            (m5.CONTENT_TYPE, "application/test"), (m5.USER_PROPERTY, ("key2", "value2"))]
    c = Client5(broker.port)
    assert c.connect("wpo", will=("will/wpo", b"gone", 0, False,
                                  sent[:3] + [(m5.WILL_DELAY_INTERVAL, 0)]
                                  + sent[3:])).rc == 0
    c.close()
    m = w.expect_publish(timeout=2)
    assert list(m.props) == sent
    p = Client5(broker.port)
    assert p.connect("wpo-pub").rc == 0
    p.publish("will/pub", b"x", qos=0, props=list(reversed(sent)))
    m = w.expect_publish(timeout=2)
    assert list(m.props) == list(reversed(sent))


# ---- as Mosquitto 2.0.11 does (its suite: 07-will-delay*, 07-will-takeover,
# 07-will-oversize-payload) ---------------------------------------------------

@pytest.mark.timeout(15)
def test_mqtt5_will_delay_waits_with_session_expiry_0(broker):
    # MQTT 5 3.1.3.2.2 would end the session at once (expiry 0) and send
    # the will with it; Mosquitto waits the delay, and so does kite.
    w = _watcher(broker.port)
    c = _will_client(broker.port, "wdz", 2, expiry=0)
    c.close()
    start = time.monotonic()
    w.expect_silence(1.0)
    m = w.expect_publish(timeout=5)
    assert (m.topic, m.payload) == ("will/wdz", b"gone-wdz")
    assert time.monotonic() - start >= 1.8


@pytest.mark.timeout(15)
@pytest.mark.parametrize("clean", [True, False])
def test_mqtt5_will_delay_session_expiry_0_cancelled_by_reconnect(broker, clean):
    w = _watcher(broker.port)
    c = _will_client(broker.port, "wdr", 2, expiry=0)
    since = broker.mark()
    c.close()
    broker.wait_client_gone("wdr", since)
    c = Client5(broker.port)
    ack = c.connect("wdr", clean=clean)
    assert ack.rc == 0 and not ack.session_present
    w.expect_silence(3.0)  # past the 2 s delay: never sent
    c.close()
    w.expect_silence(0.5)  # the new connection has no will


@pytest.mark.timeout(15)
def test_mqtt5_will_delay_cancelled_by_clean_start_reconnect(broker):
    # The session (expiry 10) is replaced by a clean one within the delay:
    # the client is back in time, the old will goes (Mosquitto: the same).
    w = _watcher(broker.port)
    c = _will_client(broker.port, "wdc", 2)
    since = broker.mark()
    c.close()
    broker.wait_client_gone("wdc", since)
    c = Client5(broker.port)
    ack = c.connect("wdc", clean=True, props=[(m5.SESSION_EXPIRY_INTERVAL, 10)])
    assert ack.rc == 0 and not ack.session_present
    w.expect_silence(3.0)


@pytest.mark.timeout(15)
def test_mqtt5_will_delay_not_sent_on_takeover(broker):
    # A new connection for the client id before the delay has passed: no
    # will (MQTT 5 3.1.2.5), even though the old connection never said
    # DISCONNECT and the new one starts clean.
    w = _watcher(broker.port)
    old = _will_client(broker.port, "wdt", 1)
    new = Client5(broker.port)
    assert new.connect("wdt", clean=True).rc == 0
    # kite says 0x8E (session taken over), Mosquitto 2.0.11 just closes.
    assert old.close_reason(2) in (None, 0x8E)
    w.expect_silence(2.5)


@pytest.mark.parametrize("expiry1,expiry2,will", [
    (0, 0, True), (60, 0, True), (0, 60, True), (60, 60, False)])
def test_mqtt5_takeover_publishes_will_only_if_session_ends(broker, expiry1,
                                                              expiry2, will):
    # Mosquitto's rule (07-will-takeover): the taken-over connection's will
    # goes out when its session ends with it (either side has expiry 0 or
    # clean start); a persistent session resumed by the new connection
    # keeps going, so its owner did not go.
    w = _watcher(broker.port)
    old = Client5(broker.port)
    assert old.connect("wto", clean=not expiry1,
                       props=[(m5.SESSION_EXPIRY_INTERVAL, expiry1)],
                       will=("will/wto", b"lwt", 0, False, [])).rc == 0
    new = Client5(broker.port)
    ack = new.connect("wto", clean=not expiry2,
                      props=[(m5.SESSION_EXPIRY_INTERVAL, expiry2)])
    assert ack.rc == 0 and ack.session_present == (not will)
    assert old.close_reason(2) in (None, 0x8E)
    if will:
        assert w.expect_publish(timeout=2).payload == b"lwt"
    w.expect_silence(0.7)


def test_mqtt5_will_over_message_size_limit_refused(broker_factory):
    b = broker_factory("allow_anonymous true\nmessage_size_limit 4\n")
    w = _watcher(b.port)
    c = Client5(b.port)
    ack = c.connect("wbig", will=("will/wbig", b"12345", 0, False, []))
    assert ack.rc == 0x95  # packet too large
    c.expect_closed(2)
    c = Client5(b.port)
    assert c.connect("wbig", will=("will/wbig", b"1234", 0, False, [])).rc == 0
    c.close()
    assert w.expect_publish(timeout=2).payload == b"1234"
