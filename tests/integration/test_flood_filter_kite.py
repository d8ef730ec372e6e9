"""kite itself with `flood_filter_interface` (issue 7), on the veth pair of
test_flood_filter.py: a source that sends garbage before CONNECT collects
strikes and is blocked at XDP for flood_filter_block_seconds, while another
source keeps connecting; after the block expires the source is back.
"""

import os
import socket
import subprocess
import time

import pytest

import mqttraw
import harness
from test_flood_filter import (CLIENT_IP, FLOODER_IP, SERVER_IP,  # noqa: F401
                               driver_bin, kite_blocked, netns, topology)

pytestmark = pytest.mark.kite_only("XDP flood filter in kite")
PORT = 1883
BLOCK_S = 2  # flood_filter_block_seconds below
EXPIRY_SLACK_S = 0.3


def _connect_from(ns, src, timeout):
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(timeout)
    s.connect((SERVER_IP, PORT))
    return s


def _mqtt_ok(ns, src, cid):
    s = _connect_from(ns, src, 2)
    try:
        s.sendall(mqttraw.connect(cid))
        data = s.recv(4)
        return data[:1] == b"\x20" and data[3:4] == b"\x00"
    finally:
        s.close()


@pytest.fixture
def kite_in_ns(topology, tmp_path):
    binary = os.environ.get("KITE_BIN") or "build/kite"
    conf = tmp_path / "kite.conf"
    conf.write_text(
        "listener %d %s\nallow_anonymous true\nlog_dest stderr\nsys_interval 1\n"
        "flood_filter_interface %s\nflood_filter_strikes 3\n"
        "flood_filter_block_seconds 2\nflood_filter_syn_rate 100\n"
        "flood_filter_syn_burst 100\nflood_filter_required true\n"
        % (PORT, SERVER_IP, topology["iface"]))
    log = open(tmp_path / "kite.log", "w+")
    proc = subprocess.Popen(["ip", "netns", "exec", topology["srv"], binary,
                             "-c", str(conf)], stdout=log, stderr=log)
    # The listeners accept before the filter is loaded and attached (shard
    # init opens them first): wait for both.
    deadline = time.monotonic() + 5
    while True:
        try:
            _connect_from(topology["cli"], FLOODER_IP, 0.5).close()
            if "Flood filter attached" in (tmp_path / "kite.log").read_text():
                break
        except OSError:
            pass
        assert proc.poll() is None, (tmp_path / "kite.log").read_text()
        assert time.monotonic() < deadline, \
            "kite did not listen with the filter:\n" + (tmp_path / "kite.log").read_text()
        time.sleep(0.1)
    yield topology, proc, tmp_path / "kite.log", binary
    proc.terminate()
    try:
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_garbage_before_connect_blocks_the_source_at_xdp_until_expiry(kite_in_ns):
    topo, proc, logpath, binary = kite_in_ns
    ns = topo["cli"]
    assert "Flood filter attached" in logpath.read_text()
    assert _mqtt_ok(ns, CLIENT_IP, "before")  # allowed, then misbehaves
    for _ in range(3):
        s = _connect_from(ns, CLIENT_IP, 2)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(2)
        assert s.recv(16) == b""  # closed by kite
        s.close()
    # The third strike blocked the source in the filter's map.
    harness.wait_for(lambda: CLIENT_IP in kite_blocked(binary, proc.pid), 3,
                     what="%s in `kite filter list`" % CLIENT_IP)
    blocked_at = time.monotonic()
    with pytest.raises(socket.timeout):  # SYN dropped by XDP: no answer, not a RST
        _connect_from(ns, CLIENT_IP, 0.8)
    assert _mqtt_ok(ns, FLOODER_IP, "other-source")  # others unaffected
    # The point: flood_filter_block_seconds (2) pass.
    time.sleep(max(0.0, blocked_at + BLOCK_S + EXPIRY_SLACK_S - time.monotonic()))
    assert CLIENT_IP not in kite_blocked(binary, proc.pid)
    assert _mqtt_ok(ns, CLIENT_IP, "after-expiry")
    text = logpath.read_text()
    assert "first packet was not CONNECT" in text or "malformed" in text

    # The counters are logged every sys_interval (and on $SYS): the block
    # and the dropped SYNs show in a line logged from now on.
    def counts():
        lines = [l for l in logpath.read_text().splitlines() if "flood filter: passed" in l]
        if not lines:
            return None
        c = dict((k.strip(), int(v)) for k, v in
                 (part.rsplit(" ", 1) for part in
                  lines[-1].split("flood filter: ", 1)[1].split(", ")))
        return c if c["blocks added"] >= 1 and c["dropped blocked"] >= 1 else None
    harness.wait_for(counts, 3, interval=0.1,
                     what="a counters line with the block and its dropped SYN")
    assert proc.poll() is None
