"""Shared subscriptions across kite's shards (kite only: `shards 4`).

Members connect on many connections, so SO_REUSEPORT spreads them over the
shards, and the group's home shard is wherever its name hashes: messages
cross shards to reach members. Each message must reach exactly one member;
a member that unsubscribes or disconnects mid-stream costs the others
nothing at QoS 1; messages published after a SUBACK/UNSUBACK respect it.
"""

import time

import pytest

import mqtt5raw as m5
from mqtt5raw import Client5

pytestmark = pytest.mark.kite_only("kite's shards")

MEMBERS = 6


def _client(port, cid):
    c = Client5(port)
    c.connect(cid)
    return c


def _drain(c, into, quiet=0.3):
    # Acks open the inflight window (20), so read until nothing more comes.
    while True:
        batch = [m for m in c.recv_all(quiet) if m.type == m5.PUBLISH]
        if not batch:
            return
        for m in batch:
            if m.qos:
                c.ack(m)
            into.append(int(m.payload))


@pytest.fixture
def sharded(broker_factory):
    return broker_factory("allow_anonymous true\nshards 4\n")


def test_shared_group_over_four_shards_delivers_each_message_once(sharded):
    port = sharded.port
    members = [_client(port, "m%d" % i) for i in range(MEMBERS)]
    for m in members:
        assert m.subscribe([("$share/fleet/tele/+", 1)]).codes == [1]
    p = _client(port, "pub")
    for i in range(300):
        assert p.publish("tele/x", b"%d" % i, qos=1, pid=i % 60000 + 1).rc == 0
    got = [[] for _ in members]
    for m, g in zip(members, got):
        _drain(m, g)
    everything = sorted(x for g in got for x in g)
    assert everything == list(range(300)), "lost or duplicated"
    assert sum(1 for g in got if g) >= 2, [len(g) for g in got]


def test_shared_members_leaving_mid_stream_lose_nothing_for_the_rest(sharded):
    port = sharded.port
    members = [_client(port, "l%d" % i) for i in range(MEMBERS)]
    for m in members:
        m.subscribe([("$share/g2/w/t", 1)])
    p = _client(port, "pub2")
    got = [[] for _ in members]
    for i in range(100):
        p.publish("w/t", b"%d" % i, qos=1, pid=i + 1)
    for m, g in zip(members, got):
        _drain(m, g)
    # Half the group leaves: one by UNSUBSCRIBE, two by DISCONNECT.
    assert members[0].unsubscribe(["$share/g2/w/t"]).codes == [m5.SUCCESS]
    for m in members[1:3]:
        m.send(m5.disconnect())
        # Gone once kite has closed it: a message the group hands to a
        # member whose DISCONNECT is still unread on its shard goes with
        # that clean session (as in Mosquitto), which is not what this
        # test is about.
        m.expect_closed(5)
        m.close()
    stay = members[3:]
    for i in range(100, 200):
        p.publish("w/t", b"%d" % i, qos=1, pid=i + 1)
    later = []
    for m in stay:
        _drain(m, later)
    members[0].expect_silence(0.3)  # unsubscribed: nothing more comes to it
    assert sorted(later) == list(range(100, 200)), "lost or duplicated"
    assert sorted(x for g in got for x in g) == list(range(100))


def test_message_right_after_shared_suback_reaches_the_group(sharded):
    port = sharded.port
    p = _client(port, "pub3")
    for i in range(12):  # new groups, homes hashed over the shards
        m = _client(port, "fresh%d" % i)
        assert m.subscribe([("$share/g%d/fresh/t%d" % (i, i), 1)]).codes == [1]
        assert p.publish("fresh/t%d" % i, b"%d" % i, qos=1, pid=i + 1).rc == 0
        got = []
        _drain(m, got, 0.3)
        assert got == [i]
        m.close()


def test_mqtt5_session_expiry_holds_across_shards(sharded):
    # A 5.0 session with an expiry, resumed from many new connections (which
    # SO_REUSEPORT spreads over the 4 shards, so most land on a shard other
    # than the session's): every reconnect finds the session and its queued
    # QoS 1 message; once the expiry has passed, the session is gone.
    port = sharded.port
    first = _client(port, "pub-exp")
    s = Client5(port)
    assert s.connect("roamer", clean=True,
                     props=[(m5.SESSION_EXPIRY_INTERVAL, 3)]).rc == 0
    assert s.subscribe([("roam/t", 1)]).codes == [1]
    s.send(m5.disconnect())
    s.expect_closed(2)
    s.close()
    for i in range(8):
        assert first.publish("roam/t", b"%d" % i, qos=1, pid=i + 1).rc == 0
        c = Client5(port)
        ack = c.connect("roamer", clean=False,
                        props=[(m5.SESSION_EXPIRY_INTERVAL, 3)])
        assert ack.rc == 0 and ack.session_present, i
        got = []
        _drain(c, got, 0.2)
        assert got == [i], (i, got)
        c.send(m5.disconnect())
        c.expect_closed(2)  # the expiry runs from here
        c.close()

    time.sleep(3.6)  # the point: the session expires 3 s after that close
    c = Client5(port)
    ack = c.connect("roamer", clean=False,
                    props=[(m5.SESSION_EXPIRY_INTERVAL, 3)])
    assert ack.rc == 0 and not ack.session_present
    c.close()


def test_retained_messages_wait_for_a_suback_held_for_a_shared_group(sharded):
    # One SUBSCRIBE naming a shared group (its home may be another shard, so
    # the SUBACK waits for it) and an ordinary filter with a retained
    # message: the SUBACK still comes first, then the retained PUBLISH.
    port = sharded.port
    p = _client(port, "ret-pub")
    p.publish("ret/t", b"kept", qos=1, retain=True, pid=1)
    for i in range(12):  # groups hashed over the shards: most are remote
        c = _client(port, "ret-sub%d" % i)
        c.send(m5.subscribe(7, [("$share/rg%d/x/%d" % (i, i), 1), ("ret/t", 1)]))
        first = c.recv(5)
        assert first.type == m5.SUBACK, "group %d: %r before the SUBACK" % (i, first)
        assert first.codes == [1, 1]
        pub = c.recv(5)
        assert pub.type == m5.PUBLISH and pub.payload == b"kept" and pub.retain
        c.close()
