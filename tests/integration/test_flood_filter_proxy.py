"""The flood filter behind a proxy (`enable_proxy_protocol`), on the veth
pair of test_flood_filter.py. Every packet of a client behind the proxy
comes from the proxy's address, so strikes must go to the client named in
the PROXY header, never to the proxy (one bad client would cut off all the
others), and a client blocked that way must be refused by kite itself,
after its header, since XDP cannot tell its packets apart. Something that
does not speak the protocol at all is struck under its own address."""

import os
import socket
import struct
import subprocess
import time

import pytest

import harness
import mqttraw
from test_flood_filter import (CLIENT_IP, FLOODER_IP, SERVER_IP,  # noqa: F401
                               driver_bin, kite_blocked, netns, topology)

pytestmark = pytest.mark.kite_only("XDP flood filter and PROXY protocol in kite")
PORT = 1883
PROXY_IP = CLIENT_IP  # plays HAProxy
BAD, GOOD = "10.66.0.1", "10.66.0.2"  # clients behind it


def v2(src, sport=40000):
    body = socket.inet_aton(src) + socket.inet_aton(SERVER_IP) + struct.pack("!HH", sport, PORT)
    return b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", len(body)) + body


def _send_from(ns, src, data, timeout=2):
    """Connects from src, sends data, returns what came back before the
    close (or the first 4 bytes)."""
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((src, 0))
        s.settimeout(timeout)
        s.connect((SERVER_IP, PORT))
        s.sendall(data)
        got = b""
        while len(got) < 4:
            try:
                d = s.recv(4 - len(got))
            except ConnectionResetError:
                break
            if not d:
                break
            got += d
        return got
    finally:
        s.close()


@pytest.fixture
def kite_behind_proxy(topology, tmp_path):
    binary = os.environ.get("KITE_BIN") or "build/kite"
    conf = tmp_path / "kite.conf"
    conf.write_text(
        "listener %d %s\nenable_proxy_protocol 2\nallow_anonymous true\n"
        "log_dest stderr\nlog_type all\n"
        "flood_filter_interface %s\nflood_filter_strikes 3\n"
        "flood_filter_block_seconds 30\nflood_filter_syn_rate 100\n"
        "flood_filter_syn_burst 100\nflood_filter_required true\n"
        % (PORT, SERVER_IP, topology["iface"]))
    log = open(tmp_path / "kite.log", "w+")
    proc = subprocess.Popen(["ip", "netns", "exec", topology["srv"], binary,
                             "-c", str(conf)], stdout=log, stderr=log)
    deadline = time.monotonic() + 5
    while "Flood filter attached" not in (tmp_path / "kite.log").read_text():
        assert proc.poll() is None, (tmp_path / "kite.log").read_text()
        assert time.monotonic() < deadline, (tmp_path / "kite.log").read_text()
        time.sleep(0.1)
    yield topology, proc, tmp_path / "kite.log", binary
    proc.terminate()
    try:
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_strikes_go_to_the_client_behind_the_proxy_never_to_the_proxy(kite_behind_proxy):
    topo, proc, logpath, binary = kite_behind_proxy
    ns = topo["cli"]
    assert _send_from(ns, PROXY_IP, v2(GOOD) + mqttraw.connect("good-1")) == b"\x20\x02\x00\x00"
    for i in range(3):  # garbage before CONNECT, through the proxy
        assert _send_from(ns, PROXY_IP, v2(BAD, 41000 + i) + b"GET / HTTP/1.1\r\n\r\n") == b""
    harness.wait_for(lambda: BAD in kite_blocked(binary, proc.pid), 3,
                     what="%s in `kite filter list`" % BAD)
    assert PROXY_IP not in kite_blocked(binary, proc.pid)
    # The blocked client is refused by kite after its header ...
    assert _send_from(ns, PROXY_IP, v2(BAD) + mqttraw.connect("bad-again")) == b""
    harness.wait_for(lambda: "blocked by the flood filter" in logpath.read_text(), 3,
                     what="the refusal in the log")
    # ... while the proxy, and every other client behind it, is served.
    assert _send_from(ns, PROXY_IP, v2(GOOD) + mqttraw.connect("good-2")) == b"\x20\x02\x00\x00"
    text = logpath.read_text()
    assert "New client connected from %s:40000 as good-2" % GOOD in text
    assert "New client connected from %s" % PROXY_IP not in text
    assert proc.poll() is None


def test_a_peer_without_a_header_is_struck_under_its_own_address(kite_behind_proxy):
    topo, proc, logpath, binary = kite_behind_proxy
    ns = topo["cli"]
    for _ in range(3):
        assert _send_from(ns, FLOODER_IP, mqttraw.connect("no-header")) == b""
    harness.wait_for(lambda: FLOODER_IP in kite_blocked(binary, proc.pid), 3,
                     what="%s in `kite filter list`" % FLOODER_IP)
    assert _send_from(ns, PROXY_IP, v2(GOOD) + mqttraw.connect("good")) == b"\x20\x02\x00\x00"
    assert proc.poll() is None
