"""MQTT 5.0 bad input: malformed / duplicated / misplaced properties, bad
CONNECT values, protocol errors. The offending connection gets the DISCONNECT
reason code and closes; a bystander is untouched. Expected values are
Mosquitto 2.0.11's; where it departs from the OASIS spec a comment says so
(Mosquitto often closes WITHOUT a DISCONNECT, which the spec allows only
where sending one is a SHOULD/MAY)."""

import pytest

import mqtt5raw as m5
from mqtt5raw import Client5


class Bystander5:
    def __init__(self, port):
        self.c = Client5(port)
        assert self.c.connect("bystander5").rc == 0
        self.c.subscribe([("bys/t", 1)])
        self.n = 0

    def round_trip(self):
        self.n += 1
        self.c.send(m5.publish("bys/t", b"%d" % self.n, qos=1, pid=self.n))
        got_ack = got_msg = False
        while not (got_ack and got_msg):
            m = self.c.recv(5)
            if m.type == m5.PUBACK and m.pid == self.n:
                got_ack = True
            elif m.type == m5.PUBLISH and m.payload == b"%d" % self.n:
                self.c.ack(m)
                got_msg = True


@pytest.fixture
def bystander(broker):
    b = Bystander5(broker.port)
    yield b
    b.round_trip()
    b.c.close()


def _connected(broker, cid):
    c = Client5(broker.port)
    assert c.connect(cid).rc == 0
    return c


# --- after CONNECT: DISCONNECT with a reason code ---------------------------

def test_mqtt5_property_not_allowed_on_publish_malformed_0x81(broker, bystander):
    c = _connected(broker, "np")
    c.send(m5.publish("t", b"x", qos=1, props=[(m5.SESSION_EXPIRY_INTERVAL, 5)]))
    assert c.expect_disconnect().rc == m5.MALFORMED_PACKET


def test_mqtt5_unknown_property_id_malformed_0x81(broker, bystander):
    c = _connected(broker, "unk")
    c.send(m5.publish("t", b"x", raw_props=b"\x7f\x00"))
    assert c.expect_disconnect().rc == m5.MALFORMED_PACKET


def test_mqtt5_property_length_overrun_malformed_0x81(broker, bystander):
    c = _connected(broker, "ovr")
    # Content type claims 5 bytes, the property block holds 2.
    c.send(m5.publish("t", b"", raw_props=b"\x03\x00\x05ab"))
    assert c.expect_disconnect().rc == m5.MALFORMED_PACKET


def test_mqtt5_duplicated_property_on_publish(broker, bystander):
    # Spec 2.2.2.2: a property that may appear once, twice, is a Protocol
    # Error -> DISCONNECT 0x82. Mosquitto 2.0.11 DEVIATES: it closes the
    # connection WITHOUT a DISCONNECT. Accepted: 0x82, or a silent close.
    c = _connected(broker, "dupp")
    c.send(m5.publish("t", b"x", qos=1,
                      props=[(m5.CONTENT_TYPE, "a"), (m5.CONTENT_TYPE, "b")]))
    # kite: the spec's DISCONNECT 0x82, then the close; no PUBACK.
    c.expect_closed(3, after=m5.DISCONNECT, reason=m5.PROTOCOL_ERROR,
                    optional=broker.flavour == "mosquitto")


def test_mqtt5_qos3_publish_malformed_0x81(broker, bystander):
    c = _connected(broker, "q3")
    c.send(m5.packet(m5.PUBLISH, 0x06, b"\x00\x01t\x00\x01\x00"))
    assert c.expect_disconnect().rc == m5.MALFORMED_PACKET


def test_mqtt5_second_connect_is_protocol_error(broker, bystander):
    # Spec [MQTT-3.1.0-2]: a Protocol Error; the server MAY send
    # DISCONNECT 0x82 first. Mosquitto 2.0.11 closes without one and its
    # suite (01-connect-duplicate) checks that; kite does the same. No
    # second CONNACK either way.
    c = _connected(broker, "twice")
    c.send(m5.connect("twice"))
    c.expect_closed(3)


def test_mqtt5_connack_from_client_closes(broker, bystander):
    # A server-to-client packet type from a client: Protocol Error, closed
    # without a DISCONNECT, as Mosquitto does (01-connect-connack-2163).
    c = _connected(broker, "ca")
    c.send(m5.packet(m5.CONNACK, 0, b"\x00\x00\x00"))
    c.expect_closed(3)


def test_mqtt5_auth_packet_without_auth_method_is_protocol_error(broker, bystander):
    # Spec 4.12: AUTH without an Authentication Method in CONNECT is a
    # Protocol Error (0x82). Mosquitto 2.0.11 closes WITHOUT a DISCONNECT.
    c = _connected(broker, "auth")
    c.send(m5.auth(0x18))
    # kite closes without one too; a DISCONNECT, if any, must say 0x82.
    c.expect_closed(3, after=m5.DISCONNECT, reason=m5.PROTOCOL_ERROR,
                    optional=True)


def test_mqtt5_packet_too_large_for_default_limit_is_not_an_issue(broker, bystander):
    # Without max_packet_size, a 100 kB publish is fine (no 0x95).
    c = _connected(broker, "big")
    assert c.publish("big/t", b"x" * 100000, qos=1).rc == m5.NO_MATCHING_SUBSCRIBERS
    c.ping()


def test_mqtt5_client_disconnect_with_reason_code_closes_quietly(broker, bystander):
    c = _connected(broker, "bye")
    c.send(m5.disconnect(0x00, [(m5.REASON_STRING, "bye"), (m5.USER_PROPERTY, ("a", "b"))]))
    c.expect_closed(2)  # nothing sent back


# --- CONNECT: the connection closes (CONNACK >= 0x80 allowed first) ---------

def _connect_rejected(broker, pkt):
    """Sends pkt as the first packet; the broker must close the connection,
    with or without a CONNACK (>= 0x80) first. Returns that CONNACK's
    reason code, or None if it closed without one."""
    c = Client5(broker.port)
    c.send(pkt)
    r = c.expect_closed(3, after=m5.CONNACK, optional=True)
    if r is None:
        return None
    assert r.rc >= 0x80, r
    return r.rc


def test_mqtt5_connect_receive_maximum_zero_rejected(broker, bystander):
    # Spec 3.1.2.11.3: Receive Maximum 0 is a Protocol Error (CONNACK 0x82
    # may be sent). Mosquitto 2.0.11 closes WITHOUT a CONNACK.
    rc = _connect_rejected(broker, m5.connect("rm0", props=[(m5.RECEIVE_MAXIMUM, 0)]))
    assert rc in (None, m5.PROTOCOL_ERROR)


def test_mqtt5_connect_maximum_packet_size_zero_rejected(broker, bystander):
    # Same: a Protocol Error; Mosquitto 2.0.11 closes WITHOUT a CONNACK.
    rc = _connect_rejected(broker, m5.connect("mps0", props=[(m5.MAXIMUM_PACKET_SIZE, 0)]))
    assert rc in (None, m5.PROTOCOL_ERROR)


def test_mqtt5_connect_duplicated_property_rejected(broker, bystander):
    rc = _connect_rejected(broker, m5.connect("dupc", props=[
        (m5.SESSION_EXPIRY_INTERVAL, 1), (m5.SESSION_EXPIRY_INTERVAL, 1)]))
    assert rc in (None, m5.PROTOCOL_ERROR)


def test_mqtt5_connect_property_not_allowed_rejected(broker, bystander):
    # Topic Alias is not a CONNECT property: Malformed Packet.
    rc = _connect_rejected(broker, m5.connect("nac", props=[(m5.TOPIC_ALIAS, 1)]))
    assert rc in (None, m5.MALFORMED_PACKET, m5.PROTOCOL_ERROR)


def test_mqtt5_connect_reserved_flag_rejected(broker, bystander):
    rc = _connect_rejected(broker, m5.connect("resv", flags=0x03))
    assert rc in (None, m5.MALFORMED_PACKET)


def test_mqtt5_connect_unknown_protocol_version(broker, bystander):
    # Mosquitto answers an unknown level with a 3.1.1-style CONNACK
    # "unacceptable protocol version" (return code 1) -- no v5 reason code
    # (0x84) since the client's version is unknown. Accept either.
    c = Client5(broker.port)
    c.send(m5.connect("lvl6", proto_level=6))
    r = c.expect_closed(3, after=m5.CONNACK, optional=True)
    if r is not None:
        assert r.body in (b"\x00\x01", b"\x00\x84"), r.body


@pytest.mark.parametrize("topic", ["a/+", "#/t", "a/#"])
def test_mqtt5_wildcard_in_publish_topic_is_protocol_error(broker, bystander, topic):
    # The spec offers 0x90 (Topic Name invalid) or 0x82; Mosquitto 2.0.11
    # answers 0x82 and its suite (13-malformed-publish-v5) checks it.
    c = _connected(broker, "wild")
    c.send(m5.publish(topic, b"x", qos=1, pid=1))
    assert c.expect_disconnect().rc == m5.PROTOCOL_ERROR


def test_mqtt5_pubrel_for_a_released_message_gets_pubcomp_success(broker, bystander):
    # A client that lost the PUBCOMP sends PUBREL again after reconnecting:
    # the message was released already; the answer is a plain PUBCOMP, as
    # Mosquitto sends (03-publish-c2b-disconnect-qos2), not 0x92.
    c = _connected(broker, "rel")
    c.send(m5.pubrel(41))
    p = c.expect(m5.PUBCOMP)
    assert p.pid == 41 and p.rc in (None, 0), p
