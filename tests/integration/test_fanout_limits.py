"""Fan-out past the sizes kite keeps inline: nothing is dropped silently.

A delivery carries up to four MQTT 5 subscription identifiers inline, and a
publish used to collect at most 64 shared-subscription groups: the fifth
identifier and the 65th group were dropped without a word. Now a session
matching more subscriptions with identifiers gets further copies carrying
the rest (spec 3.3.4 allows one copy per subscription), and any number of
groups get the message. Mosquitto 2.0.11 sends one copy per subscription,
which these tests accept as well."""

import pytest

import mqtt5raw as m5
from conftest import DEFAULT_CONF
from mqtt5raw import Client5


def _client(port, cid, **kw):
    c = Client5(port)
    assert c.connect(cid, **kw).rc == 0
    return c


# Distinct filters that all match "ids/x".
MATCHING = ["ids/#", "ids/+", "ids/x", "+/x", "#", "+/+", "ids/x/#", "+/#",
            "ids/+/#", "+/x/#", "+/+/#"]


@pytest.mark.parametrize("n", [5, 9, 11])
def test_every_subscription_identifier_reaches_the_client(broker, n):
    s = _client(broker.port, "many-ids")
    want = []
    for i, f in enumerate(MATCHING[:n], 1):
        s.subscribe([(f, 1)], pid=i, props=[(m5.SUBSCRIPTION_IDENTIFIER, 100 + i)])
        want.append(100 + i)
    p = _client(broker.port, "many-ids-pub")
    p.publish("ids/x", b"one", qos=1)
    got = s.recv_all(1.0)
    for m in got:
        s.ack(m)
    assert got and all(m.payload == b"one" for m in got)
    ids = sorted(i for m in got for i in m.props.all(m5.SUBSCRIPTION_IDENTIFIER))
    assert ids == want, got
    # kite adds a copy only for identifiers that do not fit in the first.
    if broker.flavour == "kite":
        assert len(got) == (n + 3) // 4
    else:
        assert len(got) == n


@pytest.mark.timeout(60)
def test_a_publish_reaches_more_than_64_shared_groups(broker_factory):
    # One shard homes every group (more shards split them).
    broker = broker_factory(DEFAULT_CONF + "shards 1\n")
    groups = 80
    members = []
    for g in range(groups):
        c = _client(broker.port, "member-%d" % g)
        suback = c.subscribe([("$share/g%d/fan/#" % g, 0)], pid=1)
        assert suback.codes == [0]
        members.append(c)
    p = _client(broker.port, "groups-pub")
    p.publish("fan/out", b"to every group", qos=0)
    missing = []
    for g, c in enumerate(members):
        try:
            m = c.expect_publish(timeout=5)
            assert m.payload == b"to every group"
        except Exception as e:  # noqa: BLE001 - name the group that missed it
            missing.append((g, repr(e)))
    assert not missing, "groups without the message: %s" % missing[:5]
