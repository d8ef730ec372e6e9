"""A retained PUBLISH that one client sent before another client
subscribed is found by that SUBSCRIBE, whichever shards the two clients
landed on: the SUBSCRIBE waits until every other shard has served the
input that reached it first (a barrier round, io/loop.c), as Mosquitto's
one loop serves sockets in the order their data came. Mosquitto's own
04-retain-check-source-persist-diff-port is this case: client A
publishes a retained message and closes; client B, on another listener,
connects and subscribes at once and must get it as retained (retain 1),
not as a live message (retain 0) once its subscription was in place.

To make the race likely, the shards are bound to one CPU each
(`pin_shards true`) and a process spins on one of them, so the shard
there wakes late: without the barrier, kite lost this in about half of
the rounds where the two clients were on different shards."""

import os
import subprocess
import sys

import pytest

import harness
from mqttraw import RawClient, publish

pytestmark = pytest.mark.kite_only("shards are kite's own")

ROUNDS = 30


def spinner(cpu):
    """A process that keeps one CPU busy until killed."""
    code = ("import os\nos.sched_setaffinity(0, {%d})\nwhile True:\n    pass\n" % cpu)
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.mark.timeout(120)
def test_subscribe_after_a_retained_publish_gets_it_retained(broker_factory):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one CPU: the shards cannot run apart")
    p1, p2 = harness.free_port(), harness.free_port()
    broker_factory("listener %d 127.0.0.1\nlistener %d 127.0.0.1\n"
                   "allow_anonymous true\nshards 2\npin_shards true\n" % (p1, p2),
                   listener=False, port=p1, raw=True)
    spin = spinner(cpus[0])
    lost = []
    try:
        for i in range(ROUNDS):
            topic = "r/%d" % i
            payload = b"retained %d" % i
            with RawClient(p1) as a:
                assert a.connect("retain-check-%d" % i).rc == 0
                a.send(publish(topic, payload, retain=True))
            # A closed at once; B connects on the other listener.
            with RawClient(p2) as c:
                assert c.connect("retain-recv-%d" % i).rc == 0
                assert c.subscribe(topic) == [0]
                m = c.expect_publish(timeout=5)
                assert m.topic == topic and m.payload == payload
                if not m.retain:
                    lost.append(i)
    finally:
        spin.kill()
        spin.wait()
    assert not lost, "rounds where the message came live (retain 0): %s" % lost
