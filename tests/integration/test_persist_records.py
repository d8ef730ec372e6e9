"""What a delivery costs the persistence log, and that the compact records
(SENT: queued and sent at once; ACKS: a turn's finished deliveries) keep
every guarantee across kill -9, including logs written before them
(format version 1: QUEUE, OUT and DONE). docs/PERSISTENCE.md, "Records"."""

import os
import signal
import struct
import time

import pytest

import harness
import mqttraw

pytestmark = pytest.mark.kite_only("kite's own persistence log")

CONF = "allow_anonymous true\npersistence true\npersistence_location %s/\n" \
       "max_inflight_messages 100\n"


def _start(broker_factory, data, port):
    return broker_factory(CONF % data, port=port)


def _client(port, cid, clean=False):
    c = mqttraw.RawClient(port)
    ack = c.connect(cid, clean=clean)
    assert ack.rc == 0
    return c, ack


def _log_bytes(data):
    return sum(f.stat().st_size
               for f in (data / "mosquitto.db.kite").glob("shard-*.log"))


def _settle(data, quiet=0.3, timeout=5.0):
    """The logs' size once it stopped growing (written each turn end)."""
    end = time.time() + timeout
    last = -1
    while time.time() < end:
        n = _log_bytes(data)
        if n == last:
            return n
        last = n
        time.sleep(quiet)
    return last


def test_fanout_delivery_logs_under_40_bytes(broker_factory, tmp_path):
    """A QoS 1 message sent at once to a persistent subscriber and
    acknowledged by it: the log grows by a SENT and an ACKS entry, not
    by QUEUE, OUT and DONE (81 bytes with their framing)."""
    data = tmp_path / "data"
    data.mkdir()
    port = harness.free_port()
    _start(broker_factory, data, port)
    nsubs, nmsgs = 40, 25
    subs = []
    for i in range(nsubs):
        s, _ = _client(port, "fan-%d" % i)
        assert s.subscribe([("fan/t", 1)]) == [1]
        subs.append(s)
    before = _settle(data)
    p, _ = _client(port, "fan-pub", clean=True)
    for i in range(nmsgs):
        p.publish("fan/t", b"%04d" % i, qos=1, pid=i + 1)
        for s in subs:
            s.expect_publish()  # and PUBACK
    for s in subs:
        s.ping()
    after = _settle(data)
    per = (after - before) / (nsubs * nmsgs)
    # The MSG records (one per message, about 50 bytes) are in it too.
    assert per < 40, "%.1f log bytes per delivery" % per
    for s in subs:
        s.expect_silence(0.05)


def test_acked_deliveries_stay_done_and_the_rest_come_again(broker_factory, tmp_path):
    """Two subscribers get the same five messages; one acknowledges all,
    the other the first two. After kill -9 the first gets nothing again,
    the second exactly the three it did not acknowledge, with DUP and
    their packet ids."""
    data = tmp_path / "data"
    data.mkdir()
    port = harness.free_port()
    b = _start(broker_factory, data, port)
    done, half = _client(port, "done")[0], _client(port, "half")[0]
    for s in (done, half):
        assert s.subscribe([("k/#", 1)]) == [1]
    p, _ = _client(port, "k-pub", clean=True)
    for i in range(5):
        p.publish("k/x", b"m%d" % i, qos=1, pid=i + 1)
    got_done = [done.expect_publish() for _ in range(5)]
    got_half = [half.expect_publish(ack=False) for _ in range(5)]
    assert [m.payload for m in got_done] == [b"m%d" % i for i in range(5)]
    for m in got_half[:2]:
        half.ack(m)
    done.ping()
    half.ping()
    _settle(data, quiet=0.2)
    b.stop(signal.SIGKILL)
    _start(broker_factory, data, port)
    done, ack = _client(port, "done")
    assert ack.session_present
    half, ack = _client(port, "half")
    assert ack.session_present
    again = [half.expect_publish() for _ in range(3)]
    assert [m.payload for m in again] == [b"m2", b"m3", b"m4"]
    assert all(m.dup for m in again)
    assert [m.pid for m in again] == [m.pid for m in got_half[2:]]
    done.expect_silence(0.3)
    half.expect_silence(0.1)


def test_retained_message_sent_again_after_its_ack_is_kept(broker_factory, tmp_path):
    """The same retained message reaches a session twice: acknowledged,
    then sent again by a new SUBSCRIBE in the same packet burst. The ack of
    the first copy must not remove the second from the log: after kill -9
    the unacknowledged copy comes again."""
    data = tmp_path / "data"
    data.mkdir()
    port = harness.free_port()
    b = _start(broker_factory, data, port)
    p, _ = _client(port, "r-pub", clean=True)
    p.publish("ret/a", b"keep", qos=1, retain=True)
    s, _ = _client(port, "twice")
    assert s.subscribe([("ret/a", 1)]) == [1]
    first = s.expect_publish(ack=False)
    assert first.payload == b"keep" and first.retain
    # PUBACK and SUBSCRIBE in one send: one loop turn logs both.
    s.send(mqttraw.puback(first.pid) + mqttraw.subscribe(2, [("ret/a", 1)]))
    s.expect(mqttraw.SUBACK)
    second = s.expect_publish(ack=False)
    assert second.payload == b"keep"
    s.ping()
    _settle(data, quiet=0.2)
    b.stop(signal.SIGKILL)
    _start(broker_factory, data, port)
    s, ack = _client(port, "twice")
    assert ack.session_present
    again = s.expect_publish()
    assert again.payload == b"keep" and again.dup and again.pid == second.pid
    s.expect_silence(0.3)


# ---- a log written before SENT and ACKS (format version 1) -------------

def _crc32c_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _crc32c_table()


def _crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = _T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _bytes(b):
    return struct.pack("<I", len(b)) + b


def _rec(rtype, body):
    inner = bytes([rtype]) + body
    return struct.pack("<II", len(inner), _crc32c(inner)) + inner


SESSION, SUB, MSG, QUEUE, OUT, DONE = 1, 3, 5, 6, 7, 8


def _v1_log(cid):
    """Session 7 (cid) on "old/#" with messages 1..4: 1 acknowledged
    (QUEUE, OUT, DONE), 2 in flight under packet id 12, 3 and 4 queued."""
    key = 7
    now = int(time.time() * 1000)
    out = [_rec(SESSION, struct.pack("<QIQBBB", key, 3600, now, 4, 0, 0) +
                _bytes(cid) + _bytes(b""))]
    out.append(_rec(SUB, struct.pack("<QBI", key, 1, 0) + _bytes(b"old/#")))
    for n in range(1, 5):
        mid = (1 << 56) | n
        out.append(_rec(MSG, struct.pack("<QBBIQ", mid, 1, 0, 0, now) +
                        _bytes(b"old/t") + _bytes(b"v1-%d" % n) + _bytes(b"")))
        out.append(_rec(QUEUE, struct.pack("<QQBBB", key, mid, 1, 0, 0)))
    out.append(_rec(OUT, struct.pack("<QQHB", key, (1 << 56) | 1, 11, 1)))
    out.append(_rec(DONE, struct.pack("<QQ", key, (1 << 56) | 1)))
    out.append(_rec(OUT, struct.pack("<QQHB", key, (1 << 56) | 2, 12, 1)))
    header = b"KITELOG\x00" + struct.pack("<IIQ", 1, 0, 1)
    return header + b"".join(out)


def test_version_1_log_is_read_and_goes_on(broker_factory, tmp_path):
    """A log written before this format (QUEUE, OUT, DONE records, header
    version 1) gives the same session: the in-flight message again with
    DUP, then the queued ones; what is delivered after the restart is
    logged in the new records and survives another kill -9."""
    data = tmp_path / "data"
    data.mkdir()
    port = harness.free_port()
    b = _start(broker_factory, data, port)  # creates the files kite needs
    assert b.stop(signal.SIGTERM) == 0
    kdir = data / "mosquitto.db.kite"
    for f in kdir.glob("shard-*.log"):
        f.unlink()
    (kdir / "shard-0.1.log").write_bytes(_v1_log(b"old-client"))
    b = _start(broker_factory, data, port)
    s, ack = _client(port, "old-client")
    assert ack.session_present
    m2 = s.expect_publish()
    assert m2.payload == b"v1-2" and m2.dup and m2.pid == 12
    m3 = s.expect_publish(ack=False)
    assert m3.payload == b"v1-3" and not m3.dup
    m4 = s.expect_publish()
    assert m4.payload == b"v1-4"
    s.ping()
    _settle(data, quiet=0.2)
    b.stop(signal.SIGKILL)
    _start(broker_factory, data, port)
    s, ack = _client(port, "old-client")
    assert ack.session_present
    again = s.expect_publish()
    assert again.payload == b"v1-3" and again.dup and again.pid == m3.pid
    s.expect_silence(0.3)
    # Subscriptions came through too: a new message is delivered.
    p, _ = _client(port, "old-pub", clean=True)
    p.publish("old/t", b"new", qos=1)
    assert s.expect_publish().payload == b"new"
