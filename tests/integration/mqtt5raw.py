"""Raw MQTT 5.0 packets (OASIS MQTT 5.0) with every byte under the test's
control, and a reader that decodes what the broker sends back, properties
included.

Properties are a list of (id, value) pairs, kept in order (user properties
repeat). Builders never validate: malformed input is the point; `raw_props`
lets a test put arbitrary bytes where the property block goes.

Client5 is mqttraw.RawClient (same bounded reads, same helpers: recv,
expect, await_packet, expect_silence, expect_closed, is_open) decoding v5
packets."""

import struct

import mqttraw
from mqttraw import (CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL,  # noqa: F401
                     PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK,
                     PINGREQ, PINGRESP, DISCONNECT, NAMES, Closed, Timeout,
                     SilenceBroken, StillOpen, varint, mqtt_str, packet, pingreq)

AUTH = 15

# --- property identifiers (MQTT 5.0 section 2.2.2.2) -------------------------

PAYLOAD_FORMAT_INDICATOR = 0x01
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_IDENTIFIER = 0x0B
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTHENTICATION_METHOD = 0x15
AUTHENTICATION_DATA = 0x16
REQUEST_PROBLEM_INFORMATION = 0x17
WILL_DELAY_INTERVAL = 0x18
REQUEST_RESPONSE_INFORMATION = 0x19
RESPONSE_INFORMATION = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
SHARED_SUBSCRIPTION_AVAILABLE = 0x2A

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
PROP_TYPES = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT,
    0x11: _U32, 0x12: _STR, 0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE,
    0x18: _U32, 0x19: _BYTE, 0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _U16,
    0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
PROP_NAMES = {
    0x01: "payload_format", 0x02: "message_expiry", 0x03: "content_type",
    0x08: "response_topic", 0x09: "correlation_data", 0x0B: "subscription_id",
    0x11: "session_expiry", 0x12: "assigned_client_id", 0x13: "server_keep_alive",
    0x15: "auth_method", 0x16: "auth_data", 0x17: "request_problem_info",
    0x18: "will_delay", 0x19: "request_response_info", 0x1A: "response_info",
    0x1C: "server_reference", 0x1F: "reason_string", 0x21: "receive_maximum",
    0x22: "topic_alias_maximum", 0x23: "topic_alias", 0x24: "maximum_qos",
    0x25: "retain_available", 0x26: "user_property", 0x27: "maximum_packet_size",
    0x28: "wildcard_sub_available", 0x29: "sub_id_available",
    0x2A: "shared_sub_available",
}

# --- reason codes (MQTT 5.0 section 2.4) --------------------------------------

SUCCESS = 0x00
GRANTED_QOS_1 = 0x01
GRANTED_QOS_2 = 0x02
DISCONNECT_WITH_WILL = 0x04
NO_MATCHING_SUBSCRIBERS = 0x10
NO_SUBSCRIPTION_EXISTED = 0x11
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_ID_NOT_VALID = 0x85
NOT_AUTHORIZED = 0x87
SERVER_SHUTTING_DOWN = 0x8B
BAD_AUTHENTICATION_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
PACKET_ID_IN_USE = 0x91
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
PAYLOAD_FORMAT_INVALID = 0x99
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
SHARED_SUBS_NOT_SUPPORTED = 0x9E
SUB_IDS_NOT_SUPPORTED = 0xA1
WILDCARD_SUBS_NOT_SUPPORTED = 0xA2


# --- encoding ---------------------------------------------------------------

def _b(v):
    return v.encode() if isinstance(v, str) else bytes(v)


def encode_prop(pid, value):
    t = PROP_TYPES[pid]
    out = varint(pid)
    if t == _BYTE:
        return out + bytes([value])
    if t == _U16:
        return out + struct.pack("!H", value)
    if t == _U32:
        return out + struct.pack("!I", value)
    if t == _VARINT:
        return out + varint(value)
    if t in (_STR, _BIN):
        return out + mqtt_str(_b(value))
    k, v = value
    return out + mqtt_str(_b(k)) + mqtt_str(_b(v))


def props_block(props=None, raw=None):
    """Property length + properties. `raw` replaces the encoded properties
    (bytes, length prefix still computed) to build bad input."""
    body = raw if raw is not None else b"".join(encode_prop(i, v) for i, v in (props or []))
    return varint(len(body)) + body


def connect(client_id="", clean=True, keepalive=60, props=None, will=None,
            username=None, password=None, raw_props=None, flags=None,
            proto_level=5):
    """will = (topic, payload, qos, retain[, will_props])."""
    cf = 0x02 if clean else 0
    payload = mqtt_str(client_id)
    if will is not None:
        wtopic, wpayload, wqos, wretain = will[:4]
        wprops = will[4] if len(will) > 4 else []
        cf |= 0x04 | (wqos << 3) | (0x20 if wretain else 0)
        payload += props_block(wprops) + mqtt_str(wtopic) + mqtt_str(_b(wpayload))
    if username is not None:
        cf |= 0x80
        payload += mqtt_str(username)
    if password is not None:
        cf |= 0x40
        payload += mqtt_str(password)
    if flags is not None:
        cf = flags
    vh = (mqtt_str("MQTT") + bytes([proto_level, cf]) + struct.pack("!H", keepalive)
          + props_block(props, raw_props))
    return packet(CONNECT, 0, vh + payload)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=None,
            props=None, raw_props=None):
    payload = _b(payload)
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = mqtt_str(topic)
    if qos > 0:
        body += struct.pack("!H", pid if pid is not None else 1)
    return packet(PUBLISH, flags, body + props_block(props, raw_props) + payload)


def _ack(ptype, pid, rc=None, props=None, flags=0):
    body = struct.pack("!H", pid)
    if rc is not None or props:
        body += bytes([rc or 0])
        if props:
            body += props_block(props)
    return packet(ptype, flags, body)


def puback(pid, rc=None, props=None):
    return _ack(PUBACK, pid, rc, props)


def pubrec(pid, rc=None, props=None):
    return _ack(PUBREC, pid, rc, props)


def pubrel(pid, rc=None, props=None):
    return _ack(PUBREL, pid, rc, props, flags=0x02)


def pubcomp(pid, rc=None, props=None):
    return _ack(PUBCOMP, pid, rc, props)


def sub_options(qos=0, no_local=False, retain_as_published=False, retain_handling=0):
    return (qos | (0x04 if no_local else 0) | (0x08 if retain_as_published else 0)
            | (retain_handling << 4))


def subscribe(pid, filters, props=None, raw_props=None):
    """filters: [(filter, options_byte)] (see sub_options) or one filter."""
    if isinstance(filters, str):
        filters = [(filters, 0)]
    body = struct.pack("!H", pid) + props_block(props, raw_props)
    for f, o in filters:
        body += mqtt_str(f) + bytes([o])
    return packet(SUBSCRIBE, 0x02, body)


def unsubscribe(pid, filters, props=None):
    if isinstance(filters, str):
        filters = [filters]
    body = struct.pack("!H", pid) + props_block(props)
    for f in filters:
        body += mqtt_str(f)
    return packet(UNSUBSCRIBE, 0x02, body)


def disconnect(rc=None, props=None):
    if rc is None and not props:
        return packet(DISCONNECT, 0)
    body = bytes([rc or 0])
    if props:
        body += props_block(props)
    return packet(DISCONNECT, 0, body)


def auth(rc=0x18, props=None):
    return packet(AUTH, 0, bytes([rc]) + props_block(props))


# --- decoding ---------------------------------------------------------------

class Props(list):
    """[(id, value)] in wire order, with lookups."""

    def get(self, pid, default=None):
        for i, v in self:
            if i == pid:
                return v
        return default

    def all(self, pid):
        return [v for i, v in self if i == pid]

    def ids(self):
        return [i for i, _ in self]

    def named(self):
        """{name: value} (lists for repeated ids) for readable asserts."""
        out = {}
        for i, v in self:
            n = PROP_NAMES.get(i, hex(i))
            if n in out:
                if not isinstance(out[n], list) or i not in (0x0B, 0x26):
                    out[n] = [out[n]]
                out[n].append(v)
            elif i in (0x0B, 0x26):
                out[n] = [v]
            else:
                out[n] = v
        return out


def _read_varint(buf, pos):
    mult, n = 1, 0
    while True:
        b = buf[pos]
        pos += 1
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            return n, pos


def decode_props(buf, pos):
    """Returns (Props, position after the block)."""
    length, pos = _read_varint(buf, pos)
    end = pos + length
    out = Props()
    while pos < end:
        pid, pos = _read_varint(buf, pos)
        t = PROP_TYPES.get(pid)
        if t is None:
            raise ValueError("unknown property 0x%02x from broker" % pid)
        if t == _BYTE:
            v = buf[pos]
            pos += 1
        elif t == _U16:
            (v,) = struct.unpack_from("!H", buf, pos)
            pos += 2
        elif t == _U32:
            (v,) = struct.unpack_from("!I", buf, pos)
            pos += 4
        elif t == _VARINT:
            v, pos = _read_varint(buf, pos)
        elif t in (_STR, _BIN):
            (n,) = struct.unpack_from("!H", buf, pos)
            v = bytes(buf[pos + 2:pos + 2 + n])
            if t == _STR:
                v = v.decode("utf-8")
            pos += 2 + n
        else:
            (n,) = struct.unpack_from("!H", buf, pos)
            k = bytes(buf[pos + 2:pos + 2 + n]).decode()
            pos += 2 + n
            (n,) = struct.unpack_from("!H", buf, pos)
            val = bytes(buf[pos + 2:pos + 2 + n]).decode()
            pos += 2 + n
            v = (k, val)
        out.append((pid, v))
    if pos != end:
        raise ValueError("property block overran its length")
    return out, end


class Packet5:
    """One v5 packet from the broker. All: type, flags, body, props, rc
    (reason code; 0 when omitted). PUBLISH: topic, pid, qos, dup, retain,
    payload. CONNACK: session_present. SUBACK/UNSUBACK: pid, codes. Acks: pid."""

    def __init__(self, first, body):
        self.type = first >> 4
        self.flags = first & 0x0F
        self.body = body
        self.pid = None
        self.rc = 0
        self.props = Props()
        t = self.type
        if t == PUBLISH:
            self.dup = bool(self.flags & 0x08)
            self.qos = (self.flags >> 1) & 0x03
            self.retain = bool(self.flags & 0x01)
            (tlen,) = struct.unpack_from("!H", body, 0)
            self.topic = body[2:2 + tlen].decode("utf-8", "replace")
            pos = 2 + tlen
            if self.qos:
                (self.pid,) = struct.unpack_from("!H", body, pos)
                pos += 2
            self.props, pos = decode_props(body, pos)
            self.payload = body[pos:]
        elif t == CONNACK:
            self.session_present = bool(body[0] & 0x01)
            self.rc = body[1]
            if len(body) > 2:
                self.props, _ = decode_props(body, 2)
        elif t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            (self.pid,) = struct.unpack_from("!H", body, 0)
            if len(body) > 2:
                self.rc = body[2]
            if len(body) > 3:
                self.props, _ = decode_props(body, 3)
        elif t in (SUBACK, UNSUBACK):
            (self.pid,) = struct.unpack_from("!H", body, 0)
            self.props, pos = decode_props(body, 2)
            self.codes = list(body[pos:])
        elif t in (DISCONNECT, AUTH):
            if body:
                self.rc = body[0]
            if len(body) > 1:
                self.props, _ = decode_props(body, 1)

    @property
    def name(self):
        return NAMES.get(self.type, str(self.type))

    def __repr__(self):
        if self.type == PUBLISH:
            return ("<PUBLISH %r q%d%s%s pid=%s props=%r %r>"
                    % (self.topic, self.qos, " dup" if self.dup else "",
                       " retain" if self.retain else "", self.pid,
                       self.props.named(), self.payload[:40]))
        return "<%s rc=0x%02x props=%r body=%s>" % (
            self.name, self.rc, self.props.named(), self.body.hex())


class Client5(mqttraw.RawClient):
    """A raw MQTT 5 connection; recv() returns Packet5."""

    packet_class = Packet5

    def expect_disconnect(self, timeout=None, reason=None):
        """The broker sends a DISCONNECT (reason code `reason`, or one of
        them, when given) and then closes, with nothing else before or
        after it. Returns the DISCONNECT."""
        return self.expect_closed(timeout, after=DISCONNECT, reason=reason)

    def close_reason(self, timeout=None):
        """Waits for the broker to close the connection. Returns the reason
        code of a DISCONNECT sent before the close, or None when it closed
        without one. Other packets on the way are skipped. AssertionError
        (StillOpen) if the connection is still open at the timeout. Tests
        say what they expect with expect_closed(after=DISCONNECT, ...)."""
        d = self.expect_closed(timeout, after=DISCONNECT, optional=True,
                               skip=set(NAMES) - {DISCONNECT})
        return d.rc if d is not None else None

    # --- conveniences -------------------------------------------------------

    def connect(self, client_id="", clean=True, keepalive=60, props=None, **kw):
        self.send(connect(client_id, clean=clean, keepalive=keepalive, props=props, **kw))
        return self.expect(CONNACK)

    def subscribe(self, filters, pid=1, props=None):
        """filters: [(filter, options)] ; returns the SUBACK packet."""
        self.send(subscribe(pid, filters, props))
        ack = self.expect(SUBACK)
        assert ack.pid == pid
        return ack

    def unsubscribe(self, filters, pid=1, props=None):
        self.send(unsubscribe(pid, filters, props))
        ack = self.expect(UNSUBACK)
        assert ack.pid == pid
        return ack

    def publish(self, topic, payload=b"", qos=0, retain=False, pid=1, props=None):
        """Publishes and completes the QoS handshake; returns the PUBACK /
        PUBREC (None for QoS 0)."""
        self.send(publish(topic, payload, qos=qos, retain=retain, pid=pid, props=props))
        if qos == 1:
            return self.await_packet(PUBACK, pid)
        if qos == 2:
            rec = self.await_packet(PUBREC, pid)
            self.send(pubrel(pid))
            self.await_packet(PUBCOMP, pid)
            return rec
        return None
