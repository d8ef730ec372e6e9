"""Keep alive (MQTT 3.1.1 section 3.1.2.10) and PINGREQ/PINGRESP."""

import time

import pytest

import harness
import mqttraw
from mqttraw import RawClient

# How often the well-behaved client pings (keepalive 1 s): well inside it.
PING_EVERY_S = 0.3
# How long a keepalive-0 client stays idle: more than 1.5 x any small
# keepalive a broker might default to.
IDLE_S = 2.5


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
        # The idle client hears nothing until the broker closes it.
        try:
            idle.expect_silence(PING_EVERY_S)
        except mqttraw.SilenceBroken as e:
            if not e.closed:
                raise
            closed_after = time.monotonic() - start
            break
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
    # Short check: idle (nothing sent, nothing received, still open) for
    # IDLE_S, then still served.
    with RawClient(broker.port) as c:
        c.connect("ka0", keepalive=0)
        c.expect_silence(IDLE_S, ping=True)
