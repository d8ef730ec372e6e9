"""Signals: SIGTERM/SIGINT stop the broker cleanly, SIGHUP reloads."""

import signal

import pytest

import harness
from mqttraw import RawClient


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0_and_closes_clients(broker, sig):
    clients = []
    for i in range(3):
        c = RawClient(broker.port)
        c.connect("sig%d" % i, clean=bool(i % 2))
        clients.append(c)
    broker.send_signal(sig)
    for c in clients:
        c.expect_closed(5)  # 3.1.1: no packet, just the close
    assert broker.stop(sig) == 0, broker.output()
    assert not harness.listening(broker.port)


def test_sighup_keeps_running_and_clients_connected(broker):
    c = RawClient(broker.port)
    c.connect("hup", keepalive=60)
    c.subscribe([("hup/t", 1)])
    broker.reload()
    assert broker.alive()
    c.ping()
    with RawClient(broker.port) as p:
        assert p.connect("after-hup").rc == 0
        p.publish("hup/t", b"still", qos=1)
    assert c.expect_publish().payload == b"still"
