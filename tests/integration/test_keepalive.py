"""Keep alive (MQTT 3.1.1 section 3.1.2.10) and PINGREQ/PINGRESP."""

import time

import pytest

import harness
import mqttraw
from mqttraw import RawClient


@pytest.mark.timeout(20)
def test_idle_client_closed_after_keepalive_while_pinging_client_stays(broker):
    earliest, latest = harness.keepalive_close_window(broker.flavour, 1)
    pinger = RawClient(broker.port)
    pinger.connect("pinger", keepalive=1)
    idle = RawClient(broker.port)
    idle.connect("idle", keepalive=1)
    start = time.monotonic()
    closed_after = None
    while time.monotonic() - start < latest:
        pinger.ping(1)
        if not idle.is_open():
            closed_after = time.monotonic() - start
            break
        time.sleep(0.3)
    assert closed_after is not None, "idle client still open after %.1fs" % latest
    assert closed_after >= earliest, "closed too early: %.2fs" % closed_after
    # The client that kept pinging (every 0.3 s) is still served.
    pinger.ping(1)


def test_pingreq_gets_pingresp(broker):
    with RawClient(broker.port) as c:
        c.connect("ping", keepalive=60)
        for _ in range(3):
            c.send(mqttraw.pingreq())
            p = c.expect(mqttraw.PINGRESP)
            assert p.flags == 0 and p.body == b""


def test_keepalive_zero_is_never_timed_out(broker):
    # Short check: idle for 2.5 s (more than 1.5 x any small default).
    with RawClient(broker.port) as c:
        c.connect("ka0", keepalive=0)
        time.sleep(2.5)
        assert c.is_open()
        c.ping()
