"""Raw MQTT 3.1.1 packets with every byte under the test's control, and a
reader that parses what the broker sends back.

Builders return bytes and never validate: malformed input is the point.
RawClient wraps one TCP connection to 127.0.0.1 with bounded reads.

Negative checks say which "nothing" they mean:
- expect_silence(t): nothing arrives for t seconds AND the connection is
  still open (a close by the broker fails it); recv_none is its old name.
- expect_closed(t, after=None, reason=None, optional=False, skip=()): the
  broker closes within t, with nothing before it, or right after one
  packet of type `after` (a DISCONNECT with reason code `reason`, say).
- bytes_until_closed(t): the raw bytes before the close, for connections
  that never spoke MQTT."""

import select
import socket
import struct
import time

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
    6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK",
    10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
    14: "DISCONNECT", 15: "AUTH",
}


# --- encoding ---------------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def mqtt_str(s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    return struct.pack("!H", len(b)) + b


def packet(ptype, flags, body=b""):
    """Fixed header (type, flags, remaining length) + body."""
    return bytes([(ptype << 4) | (flags & 0x0F)]) + varint(len(body)) + body


def connect(client_id="", clean=True, keepalive=60, username=None,
            password=None, will=None, proto_name="MQTT", proto_level=4,
            flags=None):
    """will = (topic, payload, qos, retain). flags overrides the connect
    flags byte entirely."""
    cf = 0
    payload = mqtt_str(client_id)
    if clean:
        cf |= 0x02
    if will is not None:
        wtopic, wpayload, wqos, wretain = will
        cf |= 0x04 | (wqos << 3) | (0x20 if wretain else 0)
        payload += mqtt_str(wtopic) + mqtt_str(wpayload)
    if username is not None:
        cf |= 0x80
        payload += mqtt_str(username)
    if password is not None:
        cf |= 0x40
        payload += mqtt_str(password)
    if flags is not None:
        cf = flags
    vh = mqtt_str(proto_name) + bytes([proto_level, cf]) + struct.pack("!H", keepalive)
    return packet(CONNECT, 0, vh + payload)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=None):
    if isinstance(payload, str):
        payload = payload.encode()
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = mqtt_str(topic)
    if qos > 0:
        body += struct.pack("!H", pid if pid is not None else 1)
    return packet(PUBLISH, flags, body + payload)


def _ack(ptype, pid, flags=0):
    return packet(ptype, flags, struct.pack("!H", pid))


def puback(pid):
    return _ack(PUBACK, pid)


def pubrec(pid):
    return _ack(PUBREC, pid)


def pubrel(pid, flags=0x02):
    return _ack(PUBREL, pid, flags)


def pubcomp(pid):
    return _ack(PUBCOMP, pid)


def subscribe(pid, filters, flags=0x02):
    """filters: [(filter, qos)] or a single filter string (QoS 0)."""
    if isinstance(filters, str):
        filters = [(filters, 0)]
    body = struct.pack("!H", pid)
    for f, q in filters:
        body += mqtt_str(f) + bytes([q])
    return packet(SUBSCRIBE, flags, body)


def unsubscribe(pid, filters, flags=0x02):
    if isinstance(filters, str):
        filters = [filters]
    body = struct.pack("!H", pid)
    for f in filters:
        body += mqtt_str(f)
    return packet(UNSUBSCRIBE, flags, body)


def pingreq():
    return packet(PINGREQ, 0)


def disconnect():
    return packet(DISCONNECT, 0)


# --- decoding ---------------------------------------------------------------

class Packet:
    """One packet read from the broker. For PUBLISH: topic, pid, payload,
    dup, qos, retain. For acks: pid. CONNACK: session_present, rc.
    SUBACK: pid, codes."""

    def __init__(self, first, body):
        self.type = first >> 4
        self.flags = first & 0x0F
        self.body = body
        self.pid = None
        if self.type == PUBLISH:
            self.dup = bool(self.flags & 0x08)
            self.qos = (self.flags >> 1) & 0x03
            self.retain = bool(self.flags & 0x01)
            (tlen,) = struct.unpack_from("!H", body, 0)
            self.topic = body[2:2 + tlen].decode("utf-8", "replace")
            pos = 2 + tlen
            if self.qos:
                (self.pid,) = struct.unpack_from("!H", body, pos)
                pos += 2
            self.payload = body[pos:]
        elif self.type == CONNACK:
            self.session_present = bool(body[0] & 0x01)
            self.rc = body[1]
        elif self.type in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
            (self.pid,) = struct.unpack_from("!H", body, 0)
        elif self.type == SUBACK:
            (self.pid,) = struct.unpack_from("!H", body, 0)
            self.codes = list(body[2:])

    @property
    def name(self):
        return NAMES.get(self.type, str(self.type))

    def __repr__(self):
        if self.type == PUBLISH:
            return ("<PUBLISH %r q%d%s%s pid=%s %r>"
                    % (self.topic, self.qos, " dup" if self.dup else "",
                       " retain" if self.retain else "", self.pid,
                       self.payload[:40]))
        return "<%s flags=%x body=%s>" % (self.name, self.flags, self.body.hex())


class Closed(Exception):
    """The broker closed the connection (str(e): "EOF" or "reset: ...")."""


class Timeout(Exception):
    """Nothing (complete) arrived in time."""


class SilenceBroken(AssertionError):
    """expect_silence(): something arrived, or the broker closed the
    connection, where nothing was expected. .packet is the packet (None for
    a close), .closed is True for a close (EOF or reset), .after the
    seconds into the quiet period."""

    def __init__(self, msg, packet=None, closed=False, after=0.0):
        super().__init__(msg)
        self.packet = packet
        self.closed = closed
        self.after = after


class StillOpen(AssertionError):
    """expect_closed(): the connection was still open at the timeout."""


class RawClient:
    # What recv() returns: a subclass for another protocol version sets its
    # own decoder (mqtt5raw.Client5).
    packet_class = Packet

    def __init__(self, port, timeout=5.0, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pending = []  # packets read while waiting for another one
        self.timeout = timeout
        self.eof = False  # once closed: how ("EOF", "reset: ...")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        """Reads more bytes into buf. Raises Closed on EOF/reset, Timeout
        at the deadline."""
        if self.eof:
            raise Closed(self.eof)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout()
        r, _, _ = select.select([self.sock], [], [], remaining)
        if not r:
            raise Timeout()
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
            self.eof = "reset: %s" % e
            raise Closed(self.eof)
        if not data:
            self.eof = "EOF"
            raise Closed(self.eof)
        self.buf += data

    def _try_parse(self):
        if len(self.buf) < 2:
            return None
        mult, length, i = 1, 0, 1
        while True:
            if i >= len(self.buf):
                return None
            b = self.buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
            if i > 4:
                raise ValueError("broker sent a bad remaining length")
        if len(self.buf) < i + length:
            return None
        pkt = self.packet_class(self.buf[0], bytes(self.buf[i:i + length]))
        del self.buf[:i + length]
        return pkt

    def recv(self, timeout=None):
        """Next packet. Raises Closed or Timeout."""
        if self.pending:
            return self.pending.pop(0)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            pkt = self._try_parse()
            if pkt is not None:
                return pkt
            self._fill(deadline)

    def expect(self, ptype, timeout=None):
        pkt = self.recv(timeout)
        assert pkt.type == ptype, "expected %s, got %r" % (NAMES[ptype], pkt)
        return pkt

    def await_packet(self, ptype, pid=None, timeout=None):
        """The first packet of ptype (and pid), looked for among those kept
        aside by an earlier call before reading more; packets read on the
        way are kept for the next recv()."""
        for i, pkt in enumerate(self.pending):
            if pkt.type == ptype and (pid is None or pkt.pid == pid):
                return self.pending.pop(i)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        stash = []
        try:
            while True:
                pkt = None
                while pkt is None:
                    pkt = self._try_parse()
                    if pkt is None:
                        self._fill(deadline)
                if pkt.type == ptype and (pid is None or pkt.pid == pid):
                    return pkt
                stash.append(pkt)
        finally:
            self.pending.extend(stash)

    # --- negative checks ----------------------------------------------------
    #
    # "Nothing happens" has two different meanings, and each test must say
    # which it means: the broker stays silent and keeps the connection
    # (expect_silence), or the broker closes it (expect_closed). A close
    # is never silence, and silence is never a close.

    def expect_silence(self, timeout=0.3, ping=False):
        """Asserts that for `timeout` seconds nothing arrives (no packet,
        not even part of one) AND the connection is still open at the end:
        an EOF or reset from the broker fails it, as does a packet left
        unread by an earlier call (pending). With ping=True a PINGREQ /
        PINGRESP round trip then proves the broker still serves the
        connection (only after CONNECT). Raises SilenceBroken, an
        AssertionError."""
        start = time.monotonic()
        try:
            pkt = self.recv(timeout)
        except Timeout:
            pkt = None
        except Closed as e:
            after = time.monotonic() - start
            raise SilenceBroken(
                "broker closed the connection (%s) %.2fs into %.2fs of expected "
                "silence" % (e, after, timeout), closed=True, after=after) from None
        if pkt is not None:
            after = time.monotonic() - start
            raise SilenceBroken("unexpected packet %r %.2fs into %.2fs of expected "
                                "silence" % (pkt, after, timeout), packet=pkt, after=after)
        if self.buf:
            raise SilenceBroken("%d bytes of an incomplete packet arrived during "
                                "%.2fs of expected silence: %s"
                                % (len(self.buf), timeout, bytes(self.buf[:32]).hex()),
                                after=timeout)
        if ping:
            self.send(pingreq())
            try:
                pkt = self.recv()
            except (Closed, Timeout) as e:
                raise SilenceBroken("no PINGRESP after the silence: %s %s"
                                    % (type(e).__name__, e), closed=isinstance(e, Closed),
                                    after=timeout) from None
            if pkt.type != PINGRESP:
                raise SilenceBroken("expected PINGRESP after the silence, got %r" % (pkt,),
                                    packet=pkt, after=timeout)

    def recv_none(self, timeout=0.3):
        """Old name of expect_silence(timeout): nothing arrives AND the
        connection stays open (a close by the broker fails it)."""
        self.expect_silence(timeout)

    def expect_closed(self, timeout=None, after=None, reason=None, optional=False,
                      skip=()):
        """Asserts that the broker closes the connection (EOF or reset)
        within `timeout` (default: the client's timeout).

        after=None: no packet at all may arrive before the close.
        after=PTYPE: the close comes right after one packet of that type
          (e.g. DISCONNECT, CONNACK), which is returned; with reason=RC (or
          a collection of RCs) its reason code (.rc) must be that. With
          optional=True a bare close, without that packet, passes too (then
          None is returned), but a packet of that type that does arrive is
          still checked against `reason`.
        skip: packet types ignored before the close (e.g. PUBLISH in flight).
        Anything else arriving fails. Raises StillOpen (an AssertionError)
        if the connection is open at the timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        last = None
        while True:
            try:
                pkt = self.recv(max(0.0, deadline - time.monotonic()))
            except Closed:
                break
            except Timeout:
                raise StillOpen("connection still open after %.2fs (%s)%s"
                                % (self.timeout if timeout is None else timeout,
                                   "expected a close" if after is None else
                                   "expected %s then a close" % NAMES.get(after, after),
                                   "; got %r before" % (last,) if last else "")) from None
            if pkt.type in skip and pkt.type != after:
                continue
            if after is not None and pkt.type == after and last is None:
                last = pkt
                continue
            raise AssertionError("unexpected packet %r where the broker should %s"
                                 % (pkt, "close the connection" if last is None
                                    else "close after %r" % (last,)))
        if self.buf:
            raise AssertionError("broker closed the connection in the middle of a "
                                 "packet: %s" % bytes(self.buf[:32]).hex())
        if last is None:
            if after is not None and not optional:
                raise AssertionError("broker closed the connection (%s) without %s first"
                                     % (self.eof, NAMES.get(after, after)))
            return None
        if reason is not None:
            allowed = (reason,) if isinstance(reason, int) else tuple(reason)
            assert last.rc in allowed, "%s reason 0x%02x, expected %s" % (
                last.name, last.rc, " or ".join("0x%02x" % r for r in allowed))
        return last

    def recv_exactly(self, n, quiet=0.3, timeout=None):
        """Exactly n packets: each may take up to `timeout`, and then nothing
        more may arrive for `quiet` seconds, the connection still open."""
        got = [self.recv(timeout) for _ in range(n)]
        self.expect_silence(quiet)
        return got

    def recv_all(self, timeout=0.3, allow_close=False):
        """Every packet until `timeout` of silence. The connection must
        still be open then: a close by the broker raises AssertionError
        (naming what arrived before) unless allow_close, which returns what
        arrived before the close."""
        out = []
        while True:
            try:
                out.append(self.recv(timeout))
            except Timeout:
                return out
            except Closed as e:
                if allow_close:
                    return out
                raise AssertionError("broker closed the connection (%s) after %d "
                                     "packets %r" % (e, len(out), out[:5])) from None

    def bytes_until_closed(self, timeout=None):
        """The raw bytes the broker sends before it closes the connection
        (EOF or reset) within `timeout`; StillOpen if it does not. For
        connections that never spoke MQTT, e.g. plain bytes to a TLS port,
        where the test asserts what those bytes are (a TLS alert, nothing)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                self._fill(deadline)
        except Closed:
            data = bytes(self.buf)
            self.buf.clear()
            return data
        except Timeout:
            raise StillOpen("connection still open after %.2fs (expected a close); "
                            "received %r" % (self.timeout if timeout is None else timeout,
                                             bytes(self.buf[:64]))) from None

    def wait_closed(self, timeout=None):
        """True if the broker closes the connection within timeout, False on
        timeout. Whatever arrives before the close is discarded unchecked:
        tests use expect_closed (MQTT) or bytes_until_closed (not MQTT)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                self.buf.clear()
                self._fill(deadline)
        except Closed:
            return True
        except Timeout:
            return False

    def is_open(self):
        """Non-blocking: False if the broker has closed the connection."""
        if self.eof:
            return False
        r, _, _ = select.select([self.sock], [], [], 0)
        if not r:
            return True
        try:
            data = self.sock.recv(65536, socket.MSG_PEEK)
        except OSError:
            return False
        return bool(data)

    # --- conveniences -------------------------------------------------------

    def connect(self, client_id="", clean=True, keepalive=60, **kw):
        """Sends CONNECT and returns the CONNACK packet."""
        self.send(connect(client_id, clean=clean, keepalive=keepalive, **kw))
        return self.expect(CONNACK)

    def subscribe(self, filters, pid=1):
        """Returns the SUBACK's list of return codes."""
        self.send(subscribe(pid, filters))
        ack = self.expect(SUBACK)
        assert ack.pid == pid
        return ack.codes

    def unsubscribe(self, filters, pid=1):
        self.send(unsubscribe(pid, filters))
        ack = self.expect(UNSUBACK)
        assert ack.pid == pid

    def publish(self, topic, payload=b"", qos=0, retain=False, pid=1):
        """Publishes and completes the QoS handshake."""
        self.send(publish(topic, payload, qos=qos, retain=retain, pid=pid))
        if qos == 1:
            self.await_packet(PUBACK, pid)
        elif qos == 2:
            self.await_packet(PUBREC, pid)
            self.send(pubrel(pid))
            self.await_packet(PUBCOMP, pid)

    def ack(self, pkt):
        """Acknowledges a received PUBLISH as a well-behaved client would."""
        if pkt.qos == 1:
            self.send(puback(pkt.pid))
        elif pkt.qos == 2:
            self.send(pubrec(pkt.pid))
            self.await_packet(PUBREL, pkt.pid)
            self.send(pubcomp(pkt.pid))

    def expect_publish(self, timeout=None, ack=True):
        pkt = self.expect(PUBLISH, timeout)
        if ack:
            self.ack(pkt)
        return pkt

    def ping(self, timeout=None):
        """A PINGREQ/PINGRESP round trip: everything the broker did before
        answering is visible after this returns."""
        self.send(pingreq())
        return self.await_packet(PINGRESP, timeout=timeout)
