"""kite's mosquitto.db reader (core/mosqdb) on a file Debian's Mosquitto
2.0.11 writes: Mosquitto runs with persistence, clients leave retained
messages (QoS 0/1/2, MQTT 5 properties), persistent sessions (3.1.1 clean
session 0, MQTT 5 session expiry) with subscriptions (options,
subscription identifiers), queued QoS 1/2 messages and an incoming QoS 2
message awaiting PUBREL; SIGTERM makes Mosquitto write the file, and
build/mosqdb-dump's text form of it is checked item by item.

Needs /usr/sbin/mosquitto ($MOSQUITTO_BIN) and build/mosqdb-dump
($MOSQDB_DUMP); skipped with the reason when either is missing."""

import os
import shutil
import struct
import time
import urllib.parse
from pathlib import Path

import pytest

import harness
import mqtt5raw as m5
import mqttraw

MOSQUITTO = os.environ.get("MOSQUITTO_BIN", "/usr/sbin/mosquitto")
DUMP = os.environ.get("MOSQDB_DUMP", str(harness.REPO / "build" / "mosqdb-dump"))

UINT32_MAX = 0xFFFFFFFF
DIR_IN, DIR_OUT = "in", "out"

pytestmark = [
    pytest.mark.skipif(not os.access(MOSQUITTO, os.X_OK),
                       reason="no Mosquitto at %s (sh tools/deps.sh)" % MOSQUITTO),
    pytest.mark.skipif(not os.access(DUMP, os.X_OK),
                       reason="no %s (make build/mosqdb-dump)" % DUMP),
]

# The retained messages: topic -> (qos, payload, MQTT 5 properties).
R_Q1_PROPS = [
    (m5.PAYLOAD_FORMAT_INDICATOR, 1),
    (m5.CONTENT_TYPE, "text/plain"),
    (m5.RESPONSE_TOPIC, "resp/1"),
    (m5.CORRELATION_DATA, b"\x00\x01\xff"),
    (m5.USER_PROPERTY, ("k1", "v1")),
    (m5.USER_PROPERTY, ("k2", "v 2=x:y")),
    (m5.MESSAGE_EXPIRY_INTERVAL, 3600),
]
RETAINED = {
    "r/q0": (0, b"zero", []),
    "r/q1": (1, b"one", R_Q1_PROPS),
    "r/q2": (2, bytes(range(256)), []),
}
Q5_PROPS = [(m5.USER_PROPERTY, ("u", "1"))]


# --- the dump's text form ------------------------------------------------------

def parse_line(line):
    """(kind, {key: bytes or [bytes...] for repeated keys})."""
    kind, *tokens = line.split(" ")
    fields = {}
    for t in tokens:
        k, _, v = t.partition("=")
        if k == "user_property":
            key, _, val = v.partition(":")
            fields.setdefault(k, []).append(
                (urllib.parse.unquote_to_bytes(key), urllib.parse.unquote_to_bytes(val)))
            continue
        v = urllib.parse.unquote_to_bytes(v)
        if k in fields:
            prev = fields[k]
            fields[k] = (prev if isinstance(prev, list) else [prev]) + [v]
        else:
            fields[k] = v
    return kind, fields


def num(fields, key):
    return int(fields[key], 0)


def dump(path):
    r = harness.run_cmd([DUMP, str(path)])
    items = [parse_line(l) for l in r.stdout.splitlines()]
    return r, items


# --- making Mosquitto write a file ----------------------------------------------

def start_mosquitto(request, workdir, port):
    conf = ("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\n"
            "persistence_location %s/\nlog_dest stderr\nlog_type all\n" % (port, workdir))
    if os.geteuid() == 0:
        conf += "user root\n"  # else it drops to `mosquitto`, who cannot write here
    b = harness.Broker(MOSQUITTO, "mosquitto", workdir, conf, port=port)
    request.node._brokers = getattr(request.node, "_brokers", []) + [b]
    return b


def persistent_sessions(port):
    """Offline sessions, in this connection order (Mosquitto saves clients
    in it): returns {client id: disconnect time}."""
    gone = {}
    c = mqttraw.RawClient(port)
    assert c.connect("s311", clean=False).rc == 0
    assert c.subscribe([("q/311/#", 1), ("q/both", 2)]) == [1, 2]
    c.send(mqttraw.disconnect())
    c.close()
    gone["s311"] = time.time()

    c = m5.Client5(port)
    assert c.connect("s5", clean=False, username="alice",
                     props=[(m5.SESSION_EXPIRY_INTERVAL, 3600)]).rc == 0
    opts = m5.sub_options(2, no_local=True, retain_as_published=True)
    assert c.subscribe([("q/5/+", opts)], pid=1,
                       props=[(m5.SUBSCRIPTION_IDENTIFIER, 42)]).codes == [2]
    assert c.subscribe([("q/both", m5.sub_options(1))], pid=2,
                       props=[(m5.SUBSCRIPTION_IDENTIFIER, 7)]).codes == [1]
    c.send(m5.disconnect())
    c.close()
    gone["s5"] = time.time()

    c = m5.Client5(port)
    assert c.connect("s5q0", clean=False,
                     props=[(m5.SESSION_EXPIRY_INTERVAL, 60)]).rc == 0
    assert c.subscribe([("q/0", m5.sub_options(0))]).codes == [0]
    c.send(m5.disconnect())
    c.close()
    gone["s5q0"] = time.time()

    # A QoS 2 message in from a client that leaves before its PUBREL.
    c = mqttraw.RawClient(port)
    assert c.connect("inq2", clean=False).rc == 0
    c.send(mqttraw.publish("q/in", b"half-way", qos=2, pid=77))
    assert c.await_packet(mqttraw.PUBREC, 77).pid == 77
    c.send(mqttraw.disconnect())
    c.close()
    gone["inq2"] = time.time()
    return gone


def publish_all(port):
    """Retained and queued messages; returns when r/q1 was published."""
    p = m5.Client5(port)
    assert p.connect("pub").rc == 0
    for i, (topic, (qos, payload, props)) in enumerate(sorted(RETAINED.items())):
        if topic == "r/q1":
            sent = time.time()
        p.publish(topic, payload, qos=qos, retain=True, pid=10 + i, props=props)
    p.publish("q/311/a", b"to-311", qos=1, pid=20)
    p.publish("q/311/a", b"qos0-dropped", qos=0)
    p.publish("q/5/x", b"to-5", qos=2, pid=21, props=Q5_PROPS)
    p.publish("q/both", b"both", qos=2, pid=22)
    p.publish("q/0", b"qos0-too", qos=1, pid=23)
    p.send(m5.disconnect())
    p.close()

    u = mqttraw.RawClient(port)
    assert u.connect("pubu", username="bob").rc == 0
    u.publish("r/user", b"by-bob", qos=1, retain=True, pid=5)
    u.send(mqttraw.disconnect())
    u.close()
    return sent


def make_db(request, tmp_path):
    port = harness.free_port()
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    b = start_mosquitto(request, workdir, port)
    try:
        gone = persistent_sessions(port)
        sent = publish_all(port)
        # Everything the clients sent was acknowledged; a PINGRESP makes
        # sure the last DISCONNECTs were handled too.
        with mqttraw.RawClient(port) as c:
            c.connect("ping")
            c.ping()
    finally:
        rc = b.stop()
    assert rc == 0, b.output()
    db = workdir / "mosquitto.db"
    assert db.exists(), b.output()
    return db, port, gone, sent


# --- Mosquitto 2.0.11's stale username -------------------------------------------

def usernames_as_written(clients, real):
    """What Mosquitto 2.0.11 writes as each client's username: its
    persist__client_save reuses one struct without clearing it, and the
    chunk writer byte-swaps username_len in place. A client without a
    username gets the previous username's length (swapped on every other
    such client) and the bytes from that username's address on. Returns
    [(exact bytes or None, prefix, length)] in file order."""
    field, last = 0, b""
    out = []
    for cid in clients:
        if real.get(cid):
            last = real[cid]
            field = len(last)
        written = field
        if written <= len(last):
            out.append((last[:written], last[:written], written))
        else:  # read past the string: its NUL, then heap bytes
            out.append((None, last + b"\0", written))
        field = ((field & 0xFF) << 8) | (field >> 8)
    return out


# --- the test ---------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_mosquitto_2_0_11_file_read_item_by_item(request, tmp_path):
    db, port, gone, sent = make_db(request, tmp_path)
    r, items = dump(db)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    kinds = [k for k, _ in items]
    assert kinds[0] == "header" and kinds[1] == "cfg" and kinds[-1] == "end"
    header, cfg, end = items[0][1], items[1][1], items[-1][1]
    assert (num(header, "version"), num(header, "crc")) == (6, 0)
    assert num(cfg, "shutdown") == 1
    assert end["rc"] == b"ok" and num(end, "offset") == db.stat().st_size
    assert num(end, "chunks") == len(items) - 2
    assert "unknown" not in kinds

    msgs = {num(f, "store_id"): f for k, f in items if k == "msg"}
    assert max(msgs) <= num(cfg, "last_db_id")
    by_topic = {}
    for f in msgs.values():
        assert f["topic"] not in by_topic, "one stored message per topic here"
        by_topic[f["topic"].decode()] = f
    # QoS 0 messages for offline sessions are not queued, so not kept.
    assert sorted(by_topic) == sorted(list(RETAINED) + ["r/user", "q/311/a", "q/5/x",
                                                         "q/both", "q/in"])

    check_retained(items, msgs, by_topic, port, sent)
    check_queued(by_topic, port)
    check_clients(items, port, gone)
    check_subs(items)
    check_client_msgs(items, msgs)


def check_retained(items, msgs, by_topic, port, sent):
    retained_ids = [num(f, "store_id") for k, f in items if k == "retain"]
    assert sorted(msgs[i]["topic"].decode() for i in retained_ids) == \
        sorted(list(RETAINED) + ["r/user"])
    for topic, (qos, payload, _) in RETAINED.items():
        f = by_topic[topic]
        assert (num(f, "qos"), num(f, "retain"), f["payload"]) == (qos, 1, payload), topic
        assert (f["source_id"], f["source_username"]) == (b"pub", b"")
        assert num(f, "source_port") == port
    q1 = by_topic["r/q1"]
    # The message expiry interval becomes an absolute time, out of props.
    assert sent + 3600 - 2 <= num(q1, "expiry_time") <= sent + 3600 + 2
    assert "message_expiry" not in q1
    assert num(q1, "payload_format") == 1
    assert (q1["content_type"], q1["response_topic"], q1["correlation_data"]) == \
        (b"text/plain", b"resp/1", b"\x00\x01\xff")
    assert q1["user_property"] == [(b"k1", b"v1"), (b"k2", b"v 2=x:y")]
    assert num(q1, "source_mid") == 11
    for topic in ("r/q0", "r/q2"):
        f = by_topic[topic]
        assert num(f, "expiry_time") == 0 and "user_property" not in f
        assert "content_type" not in f and "payload_format" not in f
    user = by_topic["r/user"]
    assert (num(user, "qos"), user["payload"], user["source_id"],
            user["source_username"]) == (1, b"by-bob", b"pubu", b"bob")


def check_queued(by_topic, port):
    want = {  # topic: (qos, payload, source id, source mid)
        "q/311/a": (1, b"to-311", b"pub", 20),
        "q/5/x": (2, b"to-5", b"pub", 21),
        "q/both": (2, b"both", b"pub", 22),
        "q/in": (2, b"half-way", b"inq2", 77),
    }
    for topic, (qos, payload, source, mid) in want.items():
        f = by_topic[topic]
        assert (num(f, "qos"), num(f, "retain"), f["payload"]) == (qos, 0, payload), topic
        assert (f["source_id"], num(f, "source_mid")) == (source, mid), topic
        assert num(f, "source_port") == port and num(f, "expiry_time") == 0
    assert by_topic["q/5/x"]["user_property"] == [(b"u", b"1")]


def check_clients(items, port, gone):
    clients = [f for k, f in items if k == "client"]
    ids = [f["id"].decode() for f in clients]
    # Clean sessions (pub, pubu, ping) are not saved.
    assert ids == ["s311", "s5", "s5q0", "inq2"]
    expected = usernames_as_written(ids, {"s5": b"alice"})
    for f, (exact, prefix, length) in zip(clients, expected):
        user = f["username"]
        assert len(user) == length and user.startswith(prefix), (f["id"], user[:16])
        if exact is not None:
            assert user == exact
        assert num(f, "listener_port") == port
    by_id = dict(zip(ids, clients))
    for cid, interval in (("s311", UINT32_MAX), ("inq2", UINT32_MAX),
                          ("s5", 3600), ("s5q0", 60)):
        f = by_id[cid]
        assert num(f, "session_expiry_interval") == interval, cid
        when = num(f, "session_expiry_time")
        if interval == UINT32_MAX:
            assert when == 0, cid
        else:  # set when the client left
            assert gone[cid] + interval - 2 <= when <= gone[cid] + interval + 2, cid
    assert num(by_id["s311"], "last_mid") == 2  # two messages queued
    assert num(by_id["s5"], "last_mid") == 2


def check_subs(items):
    subs = {(f["client_id"].decode(), f["filter"].decode()):
            (num(f, "qos"), num(f, "identifier"), num(f, "options"),
             num(f, "no_local"), num(f, "retain_as_published"))
            for k, f in items if k == "sub"}
    assert subs == {
        ("s311", "q/311/#"): (1, 0, 0, 0, 0),
        ("s311", "q/both"): (2, 0, 0, 0, 0),
        ("s5", "q/5/+"): (2, 42, 0x0C, 1, 1),
        ("s5", "q/both"): (1, 7, 0, 0, 0),
        ("s5q0", "q/0"): (0, 0, 0, 0, 0),
    }


def check_client_msgs(items, msgs):
    got = []
    current = None
    for k, f in items:
        if k == "client":
            current = f["id"].decode()
        if k != "client_msg":
            continue
        # Each follows its client's CLIENT chunk.
        assert f["client_id"].decode() == current
        m = msgs[num(f, "store_id")]
        sub_id = num(f, "subscription_id") if "subscription_id" in f else 0
        got.append((current, m["topic"].decode(), num(f, "mid"), num(f, "qos"),
                    f["direction"].decode(), f["state"].decode(), num(f, "retain"),
                    num(f, "dup"), sub_id))
    assert got == [
        # Offline: queued, with the QoS the subscription granted.
        ("s311", "q/311/a", 1, 1, DIR_OUT, "queued", 0, 0, 0),
        ("s311", "q/both", 2, 2, DIR_OUT, "queued", 0, 0, 0),
        ("s5", "q/5/x", 1, 2, DIR_OUT, "queued", 0, 0, 42),
        ("s5", "q/both", 2, 1, DIR_OUT, "queued", 0, 0, 7),
        # PUBREC sent, PUBREL never came.
        ("inq2", "q/in", 77, 2, DIR_IN, "wait_for_pubrel", 0, 0, 0),
    ]


# --- the same file, broken ----------------------------------------------------------

def chunk_ends(data):
    ends, at = [], 23
    while at + 8 <= len(data):
        (length,) = struct.unpack_from("!I", data, at + 4)
        at += 8 + length
        ends.append(at)
    return ends


@pytest.mark.timeout(60)
def test_mosquitto_file_truncated_or_of_another_version_is_refused_with_reason(
        request, tmp_path):
    db, _, _, _ = make_db(request, tmp_path)
    data = db.read_bytes()
    ends = chunk_ends(data)
    assert ends[-1] == len(data)
    cut_path = tmp_path / "cut.db"
    for cut in (5, 30, ends[1] - 1, ends[3] + 4, len(data) - 1):
        cut_path.write_bytes(data[:cut])
        r, items = dump(cut_path)
        complete = sum(1 for e in ends if e <= cut)
        assert r.returncode == 1
        assert r.stderr.startswith("%s: %s: truncated: offset %d: " % (DUMP, cut_path, cut)), \
            r.stderr
        end = items[-1][1]
        assert end["rc"] == b"truncated" and num(end, "chunks") == complete
        assert len(items) == complete + (2 if cut >= 23 else 1)

    other = tmp_path / "v7.db"
    other.write_bytes(data[:19] + struct.pack("!I", 7) + data[23:])
    r, items = dump(other)
    assert r.returncode == 1 and len(items) == 1
    assert "%s: unsupported: offset 19: unknown format version 7" % other in r.stderr

    # What Mosquitto wrote is a seed for the fuzz target when asked.
    seed_dir = os.environ.get("MOSQDB_SEED_DIR")
    if seed_dir:
        shutil.copy(db, Path(seed_dir) / "mosquitto-2.0.11.db")
