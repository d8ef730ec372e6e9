"""Issue 14: MQTT over WebSockets (`protocol websockets`), plain and TLS.

Real clients: MQTT.js (Debian's node-mqtt) over ws:// and wss://, paho-mqtt
with transport="websockets", and a page that kite serves from `http_dir`,
run in headless Chromium, checked through a plain MQTT client. Bad input
on raw sockets: each bad upgrade request gets its HTTP error, each framing
violation the RFC 6455 close status, and the connection then closes.

Tests that pass on Mosquitto 2.0.11 (Debian's build has WebSockets) run
there too; kite's exact answers where Mosquitto (libwebsockets) answers
otherwise are kite_only."""

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest

import harness
import mqttraw
import tlsutil
from tlsutil import pki

HERE = Path(__file__).resolve().parent
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
NODE_PATH = "/usr/share/nodejs"

LOG = "log_dest stderr\nlog_type all\n"


def ws_conf(extra_ws="", extra_global="", tls=False, http_dir=None):
    """A plain MQTT listener on {port}, WebSockets on {port2}, and with
    tls=True WebSockets over TLS on {port3}."""
    conf = ("allow_anonymous true\n" + extra_global + LOG +
            "listener {port} 127.0.0.1\n"
            "listener {port2} 127.0.0.1\nprotocol websockets\n" + extra_ws)
    if http_dir:
        conf += "http_dir %s\n" % http_dir
    if tls:
        conf += tlsutil.tls_listener(port="{port3}",
                                     extra="protocol websockets\n")
    return conf


def listening_any(port):
    """IPv4 or IPv6: Mosquitto's WebSockets listener (libwebsockets)
    listens on [::] whatever its bind address."""
    if harness.listening(port):
        return True
    want = ":%04X" % port
    try:
        with open("/proc/net/tcp6") as f:
            return any(line.split()[1].endswith(want) and
                       line.split()[3] == "0A" for line in list(f)[1:])
    except OSError:
        return False


def start(broker_factory, **kw):
    n = 3 if kw.get("tls") else 2
    conf = ws_conf(**kw)
    ports = [harness.free_port()]
    while len(ports) < n:
        p = harness.free_port()
        if p not in ports:
            ports.append(p)
    for i, p in enumerate(ports[1:], 2):
        conf = conf.replace("{port%d}" % i, str(p))
    b = broker_factory(conf, listener=False, port=ports[0])
    for p in ports[1:]:
        harness.wait_for(lambda: listening_any(p) or not b.alive(), 5,
                         what="port %d" % p)
        assert b.alive(), b.output()
    return b, ports


# --- a raw WebSocket client ------------------------------------------------------

def upgrade_request(host="127.0.0.1", key=KEY, proto=b"mqtt", version=b"13",
                    extra=b"", path=b"/mqtt"):
    r = b"GET " + path + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
    r += b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    if key is not None:
        r += b"Sec-WebSocket-Key: " + key + b"\r\n"
    if version is not None:
        r += b"Sec-WebSocket-Version: " + version + b"\r\n"
    if proto is not None:
        r += b"Sec-WebSocket-Protocol: " + proto + b"\r\n"
    return r + extra + b"\r\n"


def read_head(sock, timeout=5.0):
    """The HTTP answer's head and whatever followed it."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def read_all(sock, timeout=5.0):
    """Everything until the peer closes (asserts it does)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError("connection still open after %ss" % timeout)


def http_exchange(port, request, timeout=5.0):
    """Sends a raw request; returns (status, head, body) once kite closed."""
    with socket.create_connection((harness.HOST, port), timeout=timeout) as s:
        s.sendall(request)
        data = read_all(s, timeout)
    head, _, body = data.partition(b"\r\n\r\n")
    head = head.decode("latin-1")
    status = int(head.split(" ", 2)[1]) if head.startswith("HTTP/1.") else None
    return status, head, body


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, m | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return hdr + payload
    key = os.urandom(4)
    return hdr + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def parse_frames(data):
    """Server frames (unmasked) in data: [(fin, opcode, payload)]."""
    out = []
    while len(data) >= 2:
        fin, op, n = data[0] >> 7, data[0] & 15, data[1] & 127
        assert not data[1] & 0x80, "a server frame must not be masked"
        off = 2
        if n == 126:
            n, off = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, off = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < off + n:
            break
        out.append((fin, op, data[off:off + n]))
        data = data[off + n:]
    return out


class WS:
    """A WebSocket connection carrying MQTT bytes."""

    def __init__(self, port, tls_ctx=None):
        s = socket.create_connection((harness.HOST, port), timeout=5)
        if tls_ctx:
            s = tls_ctx.wrap_socket(s, server_hostname="localhost")
        self.sock = s
        s.sendall(upgrade_request())
        head, self.buf = read_head(s)
        assert head.startswith("HTTP/1.1 101"), head
        want = base64.b64encode(hashlib.sha1(KEY + GUID).digest()).decode()
        assert "sec-websocket-accept: " + want.lower() in head.lower(), head
        assert "sec-websocket-protocol: mqtt" in head.lower(), head

    def send(self, data):
        self.sock.sendall(data)

    def send_mqtt(self, pkt):
        self.send(frame(2, pkt))

    def frames_until_close(self, timeout=5.0):
        data = self.buf + read_all(self.sock, timeout)
        return parse_frames(data)

    def close(self):
        self.sock.close()


def close_code(frames):
    closes = [p for _, op, p in frames if op == 8]
    assert closes, "no close frame in %r" % (frames,)
    return struct.unpack("!H", closes[0][:2])[0] if len(closes[0]) >= 2 else None


def paho_plain_sub(port, topic, client_id="plain-sub"):
    """A paho client on the plain MQTT listener subscribed to topic; its
    messages land in the returned list."""
    import paho.mqtt.client as mqtt
    got = []
    c = mqtt.Client(client_id=client_id)
    c.on_message = lambda cl, u, m: got.append((m.topic, m.payload, m.qos))
    c.connect(harness.HOST, port)
    c.loop_start()
    tlsutil.paho_subscribe(c, topic, qos=1)
    return c, got


def stop_paho(c):
    c.loop_stop()
    c.disconnect()


# --- MQTT.js --------------------------------------------------------------------

def node_mqtt():
    if not shutil.which("node"):
        pytest.skip("node is not installed (Debian package nodejs)")
    if not Path(NODE_PATH, "mqtt").exists():
        pytest.skip("MQTT.js is not installed (Debian package node-mqtt)")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_mqttjs_retained_qos012_and_will(broker_factory, scheme):
    node_mqtt()
    b, ports = start(broker_factory, tls=True)
    port = ports[1] if scheme == "ws" else ports[2]
    will_sub, will_got = paho_plain_sub(ports[0], "ws/will")
    env = dict(os.environ, NODE_PATH=NODE_PATH)
    ca = str(pki()["ca.pem"]) if scheme == "wss" else "-"
    host = "127.0.0.1" if scheme == "ws" else "localhost"
    r = subprocess.run(["node", str(HERE / "wsclients" / "mqttjs_check.js"),
                        "%s://%s:%d/mqtt" % (scheme, host, port), ca],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, (r.stdout, r.stderr, b.output())
    got = json.loads(r.stdout.strip().splitlines()[-1])["got"]
    by_topic = {m["topic"]: m for m in got}
    assert by_topic["ws/retained"] == {"topic": "ws/retained", "payload": "keep",
                                       "qos": 1, "retain": True}
    for topic, payload, qos in (("ws/q0", "zero", 0), ("ws/q1", "one", 1),
                                ("ws/q2", "two", 2)):
        assert by_topic[topic]["payload"] == payload
        assert by_topic[topic]["qos"] == qos
        assert by_topic[topic]["retain"] is False
    # The will of the client whose WebSocket died reaches a plain client.
    harness.wait_for(lambda: will_got, 5, what="the will")
    assert will_got[0][:2] == ("ws/will", b"gone")
    stop_paho(will_sub)


# --- paho-mqtt --------------------------------------------------------------------

@pytest.mark.timeout(40)
@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_paho_websockets_both_ways(broker_factory, scheme):
    import paho.mqtt.client as mqtt
    b, ports = start(broker_factory, tls=True)
    port = ports[1] if scheme == "ws" else ports[2]
    c = mqtt.Client(client_id="paho-ws", transport="websockets")
    if scheme == "wss":
        c.tls_set(ca_certs=str(pki()["ca.pem"]))
    got = []
    c.on_message = lambda cl, u, m: got.append((m.topic, m.payload, m.qos))
    c.connect("localhost", port)
    c.loop_start()
    try:
        tlsutil.paho_subscribe(c, "in/#", qos=1)
        plain, plain_got = paho_plain_sub(ports[0], "out/#")
        # Larger than one of kite's frames and one TLS record (16 KiB)
        # both ways. (Mosquitto 2.0.11 never delivers 100 KB to paho 1.6.1
        # over WebSockets, so this stays below 64 KiB.)
        big = bytes(range(256)) * 80
        c.publish("out/big", big, qos=1).wait_for_publish()
        harness.wait_for(lambda: plain_got, 5, what="paho ws -> plain")
        assert plain_got[0] == ("out/big", big, 1)
        plain.publish("in/x", big, qos=1).wait_for_publish()
        harness.wait_for(lambda: got, 5, what="plain -> paho ws")
        assert got[0] == ("in/x", big, 1)
        stop_paho(plain)
    finally:
        c.loop_stop()
        c.disconnect()


# --- a page from http_dir in headless Chromium ------------------------------------------

def chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return name
    pytest.skip("chromium is not installed (Debian package chromium)")


@pytest.mark.timeout(60)
def test_chromium_page_from_http_dir_connects_subscribes_publishes(
        broker_factory, tmp_path):
    browser = chromium()
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(HERE / "wsclients" / "page.html", www / "index.html")
    b, ports = start(broker_factory, http_dir=www)
    sub, got = paho_plain_sub(ports[0], "page/out")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         "--no-first-run", "--user-data-dir=%s" % profile,
         "--remote-debugging-port=0",
         "http://127.0.0.1:%d/" % ports[1]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        harness.wait_for(lambda: got, 30, what="the page's 'ready'")
        assert got[0][:2] == ("page/out", b"ready")
        sub.publish("page/in", b"ping", qos=1)
        harness.wait_for(lambda: len(got) >= 2, 10, what="the page's echo")
        assert got[1][:2] == ("page/out", b"echo:ping")
    finally:
        proc.kill()
        proc.wait()
        stop_paho(sub)


# --- http_dir --------------------------------------------------------------------

def make_www(tmp_path):
    www = tmp_path / "www"
    (www / "sub").mkdir(parents=True)
    (www / "index.html").write_text("<p>index</p>\n")
    (www / "sub" / "a.js").write_text("var a = 1;\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve\n")
    (www / "escape.txt").symlink_to(secret)
    (www / "inside.txt").symlink_to("sub/a.js")  # relative, inside
    return www


def get(path):
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"


def test_http_dir_serves_files_read_only_and_never_outside(broker_factory,
                                                           tmp_path):
    www = make_www(tmp_path)
    b, ports = start(broker_factory, http_dir=www)
    port = ports[1]
    st, head, body = http_exchange(port, get(b"/"))
    assert st == 200 and body == b"<p>index</p>\n", head
    if harness.flavour(harness.broker_bin()) == "kite":
        assert "Content-Type: text/html" in head  # Mosquitto sends none
    st, head, body = http_exchange(port, get(b"/sub/a.js?v=1"))
    assert st == 200 and body == b"var a = 1;\n", head
    st, _, body = http_exchange(port, get(b"/inside.txt"))
    assert st == 200 and body == b"var a = 1;\n"
    for bad in (b"/../secret.txt", b"/sub/../../secret.txt",
                b"/%2e%2e/secret.txt", b"/escape.txt", b"/missing.html",
                b"/sub"):
        st, head, body = http_exchange(port, get(bad))
        assert st in (302, 400, 403, 404), (bad, head)  # 302: to /sub/
        assert b"do not serve" not in body, bad
    st, head, _ = http_exchange(port, b"POST /index.html HTTP/1.1\r\nHost: x\r\n"
                                      b"Content-Length: 0\r\n\r\n")
    assert st in (400, 405), head


@pytest.mark.kite_only("kite's exact statuses: 403 for a path that leaves "
                       "http_dir, 405 with Allow: GET")
def test_http_dir_statuses(broker_factory, tmp_path):
    www = make_www(tmp_path)
    b, ports = start(broker_factory, http_dir=www)
    port = ports[1]
    for bad in (b"/../secret.txt", b"/%2e%2e/secret.txt", b"/escape.txt"):
        assert http_exchange(port, get(bad))[0] == 403, bad
    assert http_exchange(port, get(b"/missing.html"))[0] == 404
    st, head, _ = http_exchange(port, b"PUT /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert st == 405 and "Allow: GET" in head
    assert "escape.txt" in b.output()


# --- bad upgrade requests ----------------------------------------------------------

@pytest.mark.kite_only("kite's HTTP statuses for bad upgrade requests")
def test_bad_upgrade_requests_get_their_http_error(broker_factory):
    b, ports = start(broker_factory,
                     extra_global="websockets_headers_size 1024\n")
    port = ports[1]
    cases = [
        (upgrade_request(key=None), 400),
        (upgrade_request(key=b"c2hvcnQ="), 400),
        (upgrade_request(proto=None), 400),
        (upgrade_request(proto=b"chat, superchat"), 400),
        (upgrade_request(version=b"8"), 426),
        (upgrade_request().replace(b"\r\nHost: 127.0.0.1", b""), 400),
        (upgrade_request().replace(b"\r\n", b"\n"), 400),
        (b"GET /mqtt HTTP/1.1\r\nHost: x\r\n bad fold\r\n\r\n", 400),
        # A TLS ClientHello on the plain listener: closed unanswered, as
        # on a plain MQTT listener.
        (b"\x16\x03\x01\x02\x00" + b"x" * 64 + b"\r\n\r\n", None),
        # No http_dir: a plain GET is not for this listener.
        (get(b"/index.html"), 426),
        # Larger than websockets_headers_size.
        (upgrade_request(extra=b"X-Pad: " + b"a" * 2000 + b"\r\n"), 431),
    ]
    for req, want in cases:
        st, head, _ = http_exchange(port, req)
        assert st == want, (req[:80], head)
        if want == 426:
            assert "Sec-WebSocket-Version: 13" in head
    # kite still serves a good client afterwards.
    ws = WS(port)
    ws.send_mqtt(mqttraw.connect("after-bad"))
    ws.sock.settimeout(5)
    data = ws.buf
    while len(parse_frames(data)) < 1:
        data += ws.sock.recv(4096)
    assert parse_frames(data)[0][2][:2] == b"\x20\x02"
    ws.close()


@pytest.mark.timeout(40)
def test_oversized_upgrade_request_costs_bounded_memory(broker_factory):
    """A client that never ends its request head is refused at the bound;
    200 such clients cost no more than the bound each."""
    b, ports = start(broker_factory,
                     extra_global="websockets_headers_size 1024\n")
    port = ports[1]
    socks = []
    before = rss_kib(b.pid)
    for _ in range(200):
        s = socket.create_connection((harness.HOST, port), timeout=5)
        s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 900)
        socks.append(s)
    time.sleep(0.3)
    grown = rss_kib(b.pid) - before
    assert grown < 8 * 1024, "RSS grew by %d KiB for 200 partial heads" % grown
    for s in socks:
        s.sendall(b"a" * 4096)
    for s in socks:
        data = read_all(s, 5)
        # kite answers 431; Mosquitto closes without a word.
        if harness.flavour(harness.broker_bin()) == "kite":
            assert data.startswith(b"HTTP/1.1 431"), data[:40]
        s.close()


def rss_kib(pid):
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --- framing violations --------------------------------------------------------------

def connected_ws(port, client_id="bad-frames"):
    ws = WS(port)
    ws.send_mqtt(mqttraw.connect(client_id))
    ws.sock.settimeout(5)
    data = ws.buf
    while not parse_frames(data):
        data += ws.sock.recv(4096)
    assert parse_frames(data)[0][2][:2] == b"\x20\x02", "no CONNACK"
    ws.buf = b""
    return ws


VIOLATIONS = [
    ("unmasked client frame", lambda: frame(2, b"\xc0\x00", mask=False), 1002),
    ("fragmented ping", lambda: frame(9, b"x", fin=False), 1002),
    ("ping over 125 bytes", lambda: frame(9, b"x" * 126), 1002),
    ("reserved bit", lambda: frame(2, b"\xc0\x00", rsv=4), 1002),
    ("reserved opcode", lambda: frame(3, b"x"), 1002),
    ("continuation without a start", lambda: frame(0, b"\xc0\x00"), 1002),
    ("close with a bad status code", lambda: frame(8, b"\x03\xe7"), 1002),
    ("close with bad UTF-8", lambda: frame(8, b"\x03\xe8\xff\xfe"), 1007),
    ("text frame", lambda: frame(1, b"hello"), 1003),
    # max_packet_size 1000: a data frame announcing more is refused at
    # its header, before any payload.
    ("frame over the packet limit",
     lambda: frame(2, b"\x30", length=1 << 40), 1009),
]


@pytest.mark.kite_only("kite's close codes per violation (libwebsockets "
                       "differs for some)")
@pytest.mark.parametrize("name,make,code", VIOLATIONS,
                         ids=[v[0] for v in VIOLATIONS])
def test_framing_violation_closes_with_status(broker_factory, name, make, code):
    b, ports = start(broker_factory, extra_global="max_packet_size 1000\n")
    will_sub, will_got = paho_plain_sub(ports[0], "bad/will")
    ws = WS(ports[1])
    ws.send_mqtt(mqttraw.connect("violator", will=("bad/will", b"gone", 0,
                                                    False)))
    time.sleep(0.2)
    ws.send(make())
    frames = ws.frames_until_close()
    assert close_code(frames) == code, (name, frames)
    ws.close()
    b.wait_output(r"violator .*disconnected: .*WebSocket close %d" % code)
    # A connection that fails at the WebSocket level leaves its will.
    harness.wait_for(lambda: will_got, 5, what="the will")
    # The broker goes on serving.
    connected_ws(ports[1], "after-" + name.replace(" ", "-")).close()
    stop_paho(will_sub)


def test_client_close_is_answered_and_will_published(broker_factory):
    b, ports = start(broker_factory)
    will_sub, will_got = paho_plain_sub(ports[0], "ws/will")
    ws = WS(ports[1])
    ws.send_mqtt(mqttraw.connect("closer", will=("ws/will", b"gone", 0,
                                                 False)))
    time.sleep(0.2)
    ws.send(frame(8, b"\x03\xe8bye"))
    frames = ws.frames_until_close()
    assert close_code(frames) == 1000
    harness.wait_for(lambda: will_got, 5, what="the will")
    assert will_got[0][:2] == ("ws/will", b"gone")
    stop_paho(will_sub)


def test_ping_pong_and_mqtt_split_across_frames(broker_factory):
    b, ports = start(broker_factory)
    ws = WS(ports[1])
    pkt = mqttraw.connect("splitter") + mqttraw.subscribe(1, [("s/#", 0)])
    # One packet split over a fragmented message with a ping between.
    ws.send(frame(2, pkt[:5], fin=False))
    ws.send(frame(9, b"hi"))
    ws.send(frame(0, pkt[5:], fin=True))
    ws.sock.settimeout(5)
    data = ws.buf
    while True:
        frames = parse_frames(data)
        stream = b"".join(p for _, op, p in frames if op == 2)
        if any(op == 10 and p == b"hi" for _, op, p in frames) and \
                stream.startswith(b"\x20\x02\x00\x00\x90\x03\x00\x01\x00"):
            break
        data += ws.sock.recv(4096)
    ws.close()


@pytest.mark.timeout(40)
def test_declared_frame_length_costs_no_memory(broker_factory):
    """Frames announcing 200 MB each (under no max_packet_size) with a few
    bytes behind: memory follows the bytes, not the announced lengths."""
    b, ports = start(broker_factory)
    conns = []
    before = rss_kib(b.pid)
    for i in range(50):
        ws = connected_ws(ports[1], "big%d" % i)
        pub = mqttraw.publish("t", b"")[:1] + b"\xff\xff\xff\x7f"
        ws.send(frame(2, pub + b"x" * 100, length=200 << 20))
        conns.append(ws)
    time.sleep(0.5)
    grown = rss_kib(b.pid) - before
    assert grown < 32 * 1024, "RSS grew by %d KiB" % grown
    for ws in conns:
        ws.close()


# --- config ------------------------------------------------------------------------

@pytest.mark.kite_only("kite's config messages")
def test_config_protocol_and_http_dir_errors(tmp_path):
    for conf, want in (
            ("listener 1883\nprotocol http\n", "expects mqtt, websockets or metrics"),
            ("listener 1883\nhttp_dir /tmp\n", "http_dir needs protocol websockets"),
            ("websockets_headers_size -1\n", "websockets_headers_size"),
    ):
        rc, out = tlsutil.run_broker_to_exit(harness.broker_bin(), tmp_path, conf)
        assert rc != 0 and want in out, (conf, out)
        assert "bad.conf:" in out


# --- websockets_log_level --------------------------------------------------------

WSLOG = {"E": 1, "W": 2, "N": 4, "I": 8, "D": 16, "PARSER": 32, "HEADER": 64,
         "EXT": 128}


def ws_log_lines(b):
    return [line for line in b.output().splitlines() if "WebSocket " in line
            and any("WebSocket %s: " % n in line for n in WSLOG)]


def exercise_websockets(ports):
    """What a log can tell: a real client (paho over ws://) connecting,
    publishing and closing, a refused upgrade, a framing violation, and a
    client offering an extension."""
    import paho.mqtt.client as mqtt
    c = mqtt.Client(client_id="paho-wslog", transport="websockets")
    c.connect("localhost", ports[1])
    c.loop_start()
    c.publish("wslog/t", b"x", qos=1).wait_for_publish()
    c.loop_stop()
    c.disconnect()
    st, _, _ = http_exchange(ports[1], upgrade_request(version=b"8"))
    assert st == 426
    ws = connected_ws(ports[1], "wslog-violator")
    ws.send(frame(2, b"\xc0\x00", mask=False))
    assert close_code(ws.frames_until_close()) == 1002
    ws.close()
    s = socket.create_connection((harness.HOST, ports[1]), timeout=5)
    s.sendall(upgrade_request(
        extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    head, _ = read_head(s)
    assert head.startswith("HTTP/1.1 101") and "extensions" not in head.lower()
    s.sendall(frame(9, b"hi") + frame(8, b"\x03\xe8"))
    read_all(s)
    s.close()


@pytest.mark.kite_only("kite's own lines; Mosquitto's are libwebsockets'")
@pytest.mark.parametrize("level,log_type,want", [
    (0, "all", set()),  # Mosquitto's default: nothing
    (1 | 2 | 4, "all", {"W", "N"}),
    (8 | 16, "all", {"D"}),
    (32 | 64 | 128, "all", {"PARSER", "HEADER", "EXT"}),
    (1023, "notice", set()),  # log_type websockets (or all) is needed too
    (1023, "websockets", {"W", "N", "D", "PARSER", "HEADER", "EXT"}),
])
def test_websockets_log_level_selects_what_is_logged(broker_factory, level,
                                                     log_type, want):
    conf = ws_conf(extra_global="websockets_log_level %d\n" % level)
    conf = conf.replace(LOG, "log_dest stderr\nlog_type %s\n" % log_type)
    ports = [harness.free_port(), harness.free_port()]
    b = broker_factory(conf.replace("{port2}", str(ports[1])),
                       listener=False, port=ports[0])
    harness.wait_for(lambda: harness.listening(ports[1]), 5)
    exercise_websockets(ports)
    if want:
        harness.wait_for(lambda: {n for n in WSLOG for line in ws_log_lines(b)
                                  if "WebSocket %s: " % n in line} >= want, 5,
                         what="WebSocket lines %s" % sorted(want))
    else:
        time.sleep(0.3)
    lines = ws_log_lines(b)
    seen = {n for n in WSLOG for line in lines if "WebSocket %s: " % n in line}
    assert seen == want, "\n".join(lines)
    text = "\n".join(lines)
    if "N" in want:
        assert re.search(r"WebSocket N: 127\.0\.0\.1:\d+: upgrade accepted "
                         r"\(subprotocol mqtt\)", text), text
        assert "closed by the client with code 1000, answered with 1000" in text
    if "W" in want:
        assert re.search(r"WebSocket W: 127\.0\.0\.1:\d+: upgrade refused, "
                         r"HTTP 426: unsupported Sec-WebSocket-Version", text), text
        assert "closing with code 1002" in text
    if "HEADER" in want:
        assert "WebSocket HEADER: " in text
        assert re.search(r"HEADER: 127\.0\.0\.1:\d+: request: GET /mqtt HTTP/1\.1", text)
        assert re.search(r"HEADER: .*request: Sec-WebSocket-Protocol: mqtt", text)
    if "EXT" in want:
        assert "EXT: " in text and "extensions offered, none used: permessage-deflate" in text
    if "PARSER" in want:
        assert re.search(r"PARSER: .*frame: binary \(opcode 2\), final, \d+ bytes", text)
        assert "frame: ping (opcode 9), final, 2 bytes" in text
    if "D" in want:
        assert "ping, 2 bytes: answered with a pong" in text
        assert "close frame, code 1000: answered with 1000" in text
