"""PROXY protocol v1 and v2 on listeners with `enable_proxy_protocol 1|2`
(Mosquitto 2.1's option; Mosquitto 2.0.11 has none, so these are kite-only).

HAProxy (Debian's `haproxy`) in TCP mode with `send-proxy` or
`send-proxy-v2` sits in front of kite on loopback; real clients
(mosquitto_pub/sub, paho) connect to HAProxy from 127.0.0.2, and kite's log
must name 127.0.0.2 and the client's own port, not HAProxy's 127.0.0.1.
TLS passes through HAProxy and ends at kite. Raw sockets then send what no
proxy would: no header, the other version, malformed, oversized and slow
headers (closed, with bounded memory), and header + CONNECT or header +
ClientHello in one write (served: bytes past the header are not lost)."""

import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest

import clients
import harness
import hostile
import mqttraw
import tlsutil
from clients import Paho

pytestmark = pytest.mark.kite_only("enable_proxy_protocol is Mosquitto 2.1's; 2.0.11 has none")

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CLIENT_ADDR = "127.0.0.2"  # the client's source: HAProxy's own is 127.0.0.1
LOG = "allow_anonymous true\nlog_dest stderr\nlog_type all\n"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src="10.1.2.3", sport=40001, dst="127.0.0.1", dport=1883, proto="TCP4"):
    return ("PROXY %s %s %s %d %d\r\n" % (proto, src, dst, sport, dport)).encode()


def v2(src="10.1.2.3", sport=40001, dst="127.0.0.1", dport=1883, cmd=1, fam=0x11,
       body=None, tlvs=b""):
    if body is None:
        body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    body += tlvs
    return V2_SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def start_kite(broker_factory, version, tls=False, extra=""):
    if tls:
        conf = tlsutil.tls_listener(extra="enable_proxy_protocol %d\n" % version)
    else:
        conf = "listener {port} 127.0.0.1\nenable_proxy_protocol %d\n" % version
    b, _ = tlsutil.start(broker_factory, conf + LOG + extra)
    return b


class HAProxy:
    def __init__(self, tmp_path, backend_port, version):
        if not os.path.exists(HAPROXY):
            pytest.skip("needs haproxy (Debian package haproxy)")
        self.port = harness.free_port()
        cfg = tmp_path / ("haproxy-%d.cfg" % self.port)
        cfg.write_text(
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n"
            "  timeout server 60s\n"
            "frontend mqtt\n  bind 127.0.0.1:%d\n  default_backend kite\n"
            "backend kite\n  server k 127.0.0.1:%d %s\n"
            % (self.port, backend_port, "send-proxy-v2" if version == 2 else "send-proxy"))
        self.proc = subprocess.Popen([HAPROXY, "-f", str(cfg), "-db"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        harness.wait_for(lambda: harness.listening(self.port) or self.proc.poll() is not None,
                         5, what="haproxy listening")
        assert self.proc.poll() is None, self.proc.stderr.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def haproxy(tmp_path):
    started = []

    def start(backend_port, version):
        h = HAProxy(tmp_path, backend_port, version)
        started.append(h)
        return h
    yield start
    for h in started:
        h.stop()


def connected_from(broker, client_id):
    """The address kite logged for client_id's CONNECT."""
    m = broker.wait_output(r"New client connected from (\S+) as %s " % re.escape(client_id))
    return m.group(1)


def paho_from(port, client_id, tls=False):
    """A paho client bound to CLIENT_ADDR; returns (client, its local port)."""
    import queue
    import paho.mqtt.client as mqtt
    c = mqtt.Client(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    if tls:
        c.tls_set(ca_certs=tlsutil.pki()["ca.pem"])
    msgs, connack = queue.Queue(), queue.Queue()
    c.on_connect = lambda cl, u, flags, rc: connack.put(rc)
    c.on_message = lambda cl, u, m: msgs.put(m)
    c.connect("127.0.0.1" if not tls else "localhost", port, 60, bind_address=CLIENT_ADDR)
    c.loop_start()
    assert connack.get(timeout=5) == 0
    c.msgs = msgs
    return c, c.socket().getsockname()[1]


# --- through HAProxy ---------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("version", [1, 2], ids=["send-proxy", "send-proxy-v2"])
def test_clients_behind_haproxy_are_logged_with_their_own_address(
        broker_factory, haproxy, version, tls):
    b = start_kite(broker_factory, version, tls)
    hp = haproxy(b.port, version)
    sub, sub_port = paho_from(hp.port, "pp-sub-%d" % version, tls)
    try:
        assert connected_from(b, "pp-sub-%d" % version) == "%s:%d" % (CLIENT_ADDR, sub_port)
        done = []
        sub.on_subscribe = lambda *a: done.append(1)
        sub.subscribe("pp/t", 1)
        harness.wait_for(lambda: done, 5, what="SUBACK")
        # mosquitto_pub from 127.0.0.2 through HAProxy.
        args = (tlsutil.tls_args(hp.port) if tls else
                ["-h", "127.0.0.1", "-p", str(hp.port), "-V", "mqttv311"])
        r = subprocess.run(["mosquitto_pub"] + args + ["-A", CLIENT_ADDR, "-i", "pp-pub",
                                                       "-t", "pp/t", "-m", "hello", "-q", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        assert connected_from(b, "pp-pub").startswith(CLIENT_ADDR + ":")
        assert sub.msgs.get(timeout=5).payload == b"hello"
    finally:
        sub.disconnect()
        sub.loop_stop()
    # HAProxy's own address never stands for a client.
    assert not re.search(r"New client connected from 127\.0\.0\.1:", b.output())
    assert b.alive()


@pytest.mark.timeout(60)
def test_mosquitto_sub_behind_haproxy_gets_messages_and_its_address_is_kept(
        broker_factory, haproxy):
    b = start_kite(broker_factory, 2)
    hp = haproxy(b.port, 2)
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(hp.port),
                            "-A", CLIENT_ADDR, "-i", "pp-msub", "-t", "pp/m", "-C", "1",
                            "-W", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    assert connected_from(b, "pp-msub").startswith(CLIENT_ADDR + ":")
    b.wait_output(r"pp-msub \d pp/m")
    clients.mosquitto_pub(hp.port, "pp/m", "x")
    out, err = sub.communicate(timeout=10)
    assert out.strip() == "x", err


# --- what a proxy would never send -------------------------------------------

@pytest.mark.parametrize("version", [1, 2])
def test_header_and_connect_in_one_write_are_both_read(broker_factory, version):
    b = start_kite(broker_factory, version)
    hdr = v1() if version == 1 else v2()
    with mqttraw.RawClient(b.port) as c:
        c.send(hdr + mqttraw.connect("pp-one"))
        assert c.expect(mqttraw.CONNACK).rc == 0
        c.send(mqttraw.pingreq())
        c.expect(mqttraw.PINGRESP)
    assert connected_from(b, "pp-one") == "10.1.2.3:40001"


def test_header_and_connect_split_byte_by_byte_are_read(broker_factory):
    b = start_kite(broker_factory, 2)
    data = v2(src="10.9.8.7", sport=1234) + mqttraw.connect("pp-drip")
    with mqttraw.RawClient(b.port) as c:
        for i in range(len(data)):
            c.send(data[i:i + 1])
            time.sleep(0.002)
        assert c.expect(mqttraw.CONNACK).rc == 0
    assert connected_from(b, "pp-drip") == "10.9.8.7:1234"


def test_ipv6_source_and_v1_unknown_and_v2_local_and_unix(broker_factory):
    b1 = start_kite(broker_factory, 1)
    with mqttraw.RawClient(b1.port) as c:
        c.send(v1(src="2001:db8::7", dst="::1", sport=5, proto="TCP6") + mqttraw.connect("pp-v6"))
        assert c.expect(mqttraw.CONNACK).rc == 0
    assert connected_from(b1, "pp-v6") == "2001:db8::7:5"
    with mqttraw.RawClient(b1.port) as c:
        c.send(b"PROXY UNKNOWN\r\n" + mqttraw.connect("pp-unknown"))
        assert c.expect(mqttraw.CONNACK).rc == 0
        own = c.local_port
    # UNKNOWN: the socket's own address stays.
    assert connected_from(b1, "pp-unknown") == "127.0.0.1:%d" % own
    b2 = start_kite(broker_factory, 2)
    for cid, hdr in (("pp-local", v2(cmd=0, fam=0, body=b"")),
                     ("pp-unix", v2(fam=0x31, body=b"/run/c.sock".ljust(216, b"\0"))),
                     ("pp-unspec", v2(fam=0x00, body=b""))):
        with mqttraw.RawClient(b2.port) as c:
            c.send(hdr + mqttraw.connect(cid))
            assert c.expect(mqttraw.CONNACK).rc == 0
            own = c.local_port
        assert connected_from(b2, cid) == "127.0.0.1:%d" % own


@pytest.mark.parametrize("version,data,why", [
    (2, mqttraw.connect("bare"), "not a PROXY protocol v2 header"),
    (1, mqttraw.connect("bare"), "not a PROXY protocol v1 header"),
    (2, v1(), "not a PROXY protocol v2 header"),
    (1, v2(), "not a PROXY protocol v1 header"),
    (1, b"PROXY " + b"A" * 120, "no CRLF within 107 bytes"),
    (1, b"PROXY TCP4 10.0.0.1 10.0.0.2 99999 1\r\n", "bad port"),
    (1, b"PROXY TCP4 10.0.0.1 10.0.0.2 1 1\n", "a byte that is not printable"),
    (2, V2_SIG + b"\x21\x11\xff\xff", "header longer than"),
    (2, V2_SIG + b"\x23\x11\x00\x0c", "unknown version or command"),
    (2, v2(fam=0x12), "not a stream connection"),
    (2, v2(tlvs=b"\x20\x00\x09\x01"), "TLV longer than the header"),
    (2, v2(tlvs=b"\x03\x00\x04\x00\x00\x00\x00"), "CRC32C mismatch"),
], ids=["v2-none", "v1-none", "v1-on-v2", "v2-on-v1", "v1-long", "v1-port",
        "v1-lf", "v2-huge", "v2-cmd", "v2-dgram", "v2-tlv", "v2-crc"])
def test_a_connection_without_a_valid_header_is_closed(broker_factory, version, data, why):
    b = start_kite(broker_factory, version)
    with mqttraw.RawClient(b.port) as c:
        c.send(data + mqttraw.connect("after"))
        c.expect_closed(timeout=3)
    b.wait_output(r"Client <unknown> 127\.0\.0\.1:\d+ disconnected: .*%s" % re.escape(why))
    assert "New client connected" not in b.output()
    # The listener goes on serving a proper one.
    with mqttraw.RawClient(b.port) as c:
        c.send((v1() if version == 1 else v2()) + mqttraw.connect("good"))
        assert c.expect(mqttraw.CONNACK).rc == 0


@pytest.mark.timeout(30)
def test_a_slow_or_missing_header_is_closed_at_its_deadline(broker_factory):
    b = start_kite(broker_factory, 2)
    silent = mqttraw.RawClient(b.port)
    partial = mqttraw.RawClient(b.port)
    partial.send(v2()[:10])
    t0 = time.monotonic()
    silent.expect_closed(timeout=8)
    partial.expect_closed(timeout=2)
    took = time.monotonic() - t0
    assert 4.0 <= took <= 7.5, took
    b.wait_output(r"disconnected: no PROXY header in time")


@pytest.mark.timeout(60)
def test_stalled_headers_cost_bounded_memory(broker_factory):
    """300 connections each send most of a v2 header announcing the largest
    accepted length, then stall: each holds at most one header's buffer,
    and all are closed at the deadline."""
    harness.skip_rss_bound_if_sanitized()
    b = start_kite(broker_factory, 2)
    n = 300
    before = hostile.rss_bytes(b.pid)
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
        s.sendall(V2_SIG + b"\x21\x11" + struct.pack("!H", 1024) + b"\0" * 1000)
        socks.append(s)
    time.sleep(0.5)
    grown = hostile.rss_bytes(b.pid) - before
    assert grown < 8 << 20, "RSS grew by %d bytes for %d stalled headers" % (grown, n)
    deadline = time.monotonic() + 10
    for s in socks:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
        s.close()


# --- TLS: the handshake starts after the header --------------------------------

def test_header_and_client_hello_in_one_write_over_tls(broker_factory):
    b = start_kite(broker_factory, 2, tls=True)
    ctx = tlsutil.client_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
    try:
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = out.read()
        assert hello[:1] == b"\x16"
        s.sendall(v2(src="10.5.5.5", sport=777) + hello)  # one segment
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = out.read()
                if pending:
                    s.sendall(pending)
                data = s.recv(65536)
                assert data, "closed during the handshake"
                inc.write(data)
        pending = out.read()
        obj.write(mqttraw.connect("pp-tls"))
        s.sendall(pending + out.read())
        got = b""
        while len(got) < 4:
            try:
                got += obj.read(4 - len(got))
            except ssl.SSLWantReadError:
                data = s.recv(65536)
                assert data, "closed before the CONNACK"
                inc.write(data)
        assert got == b"\x20\x02\x00\x00"
    finally:
        s.close()
    assert connected_from(b, "pp-tls") == "10.5.5.5:777"


def test_websockets_listener_reads_the_upgrade_after_the_header(broker_factory):
    from test_websockets import frame, parse_frames, read_head, upgrade_request
    b, _ = tlsutil.start(broker_factory, "listener {port} 127.0.0.1\nprotocol websockets\n"
                         "enable_proxy_protocol 2\n" + LOG)
    with socket.create_connection(("127.0.0.1", b.port), timeout=5) as s:
        # Header, upgrade request and the CONNECT frame in one write.
        s.sendall(v2(src="10.7.7.7", sport=4242) + upgrade_request() +
                  frame(2, mqttraw.connect("pp-ws")))
        head, rest = read_head(s)
        assert head.startswith("HTTP/1.1 101"), head
        while not parse_frames(rest):
            rest += s.recv(4096)
        assert parse_frames(rest)[0][2] == b"\x20\x02\x00\x00"  # CONNACK
    assert connected_from(b, "pp-ws") == "10.7.7.7:4242"


def test_a_reload_turns_the_header_on_for_new_connections_only(broker_factory):
    b, _ = tlsutil.start(broker_factory, "listener {port} 127.0.0.1\n" + LOG)
    before = mqttraw.RawClient(b.port)
    before.send(mqttraw.connect("pp-before"))
    assert before.expect(mqttraw.CONNACK).rc == 0
    b.conf_path.write_text(b.conf_path.read_text().replace(
        "listener %d 127.0.0.1\n" % b.port,
        "listener %d 127.0.0.1\nenable_proxy_protocol 1\n" % b.port))
    b.reload()
    with mqttraw.RawClient(b.port) as c:
        c.send(mqttraw.connect("pp-bare"))
        c.expect_closed(timeout=3)
    with mqttraw.RawClient(b.port) as c:
        c.send(v1() + mqttraw.connect("pp-after"))
        assert c.expect(mqttraw.CONNACK).rc == 0
    assert connected_from(b, "pp-after") == "10.1.2.3:40001"
    # The connection from before the reload is served as it was.
    before.send(mqttraw.pingreq())
    before.expect(mqttraw.PINGRESP)
    before.close()
