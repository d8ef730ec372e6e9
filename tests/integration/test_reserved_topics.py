"""Topics no client may publish to (Mosquitto 2.0.11's acl__check_dollar):
$SYS/... belongs to the broker, $share/... names shared subscriptions. The
publish is refused like an ACL denial: QoS 0 dropped, QoS 1/2 acknowledged
with 0x87 in MQTT 5 (3.1.1 has no reason code: acknowledged, not routed),
and no subscriber receives it. kite used to route them, so a $SYS
subscriber saw forged broker statistics."""

import pytest

import mqtt5raw as m5
import mqttraw


def _v5(port, cid):
    c = m5.Client5(port)
    assert c.connect(cid).rc == 0
    return c


@pytest.mark.parametrize("topic", ["$SYS/broker/clients/connected", "$SYS/forged",
                                   "$SYSTEM/x", "$share/g/t", "$shared/x"])
def test_mqtt5_publish_to_a_reserved_topic_is_refused(broker, topic):
    watcher = _v5(broker.port, "watcher")
    assert watcher.subscribe([("$SYS/#", 0), ("$SYSTEM/#", 0), ("$shared/#", 0)]).codes \
        == [0, 0, 0]
    p = _v5(broker.port, "forger")
    ack = p.publish(topic, b"forged", qos=1, pid=7)
    assert (ack.pid, ack.rc) == (7, m5.NOT_AUTHORIZED)
    p.publish(topic, b"forged q0", qos=0)
    # $SYS messages of the broker itself may arrive; never the forged ones.
    got = watcher.recv_all(0.5)
    assert not [m for m in got if m.type == mqttraw.PUBLISH and m.payload.startswith(b"forged")]
    assert p.is_open() and watcher.is_open()


def test_mqtt311_publish_to_sys_is_acknowledged_but_not_routed(broker):
    watcher = mqttraw.RawClient(broker.port)
    assert watcher.connect("watcher311").rc == 0
    assert watcher.subscribe([("$SYS/#", 0)]) == [0]
    p = mqttraw.RawClient(broker.port)
    assert p.connect("forger311").rc == 0
    p.send(mqttraw.publish("$SYS/broker/uptime", b"forged", qos=1, pid=3))
    assert p.expect(mqttraw.PUBACK).pid == 3
    got = watcher.recv_all(0.5)
    assert not [m for m in got if m.type == mqttraw.PUBLISH and m.payload == b"forged"]


def test_bridge_state_topic_stays_writable(broker):
    """Mosquitto lets bridges publish $SYS/broker/connection/NAME/state."""
    watcher = _v5(broker.port, "watch-state")
    watcher.subscribe([("$SYS/broker/connection/#", 0)])
    p = _v5(broker.port, "bridge-ish")
    ack = p.publish("$SYS/broker/connection/edge1/state", b"1", qos=1, pid=1)
    assert ack.rc in (0, m5.NO_MATCHING_SUBSCRIBERS)
    assert watcher.expect_publish().payload == b"1"
