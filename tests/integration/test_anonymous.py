"""allow_anonymous false: who may connect (Mosquitto 2.0.11's rules).

A username is no credential by itself: without a password file (or a
certificate identity) nothing can vouch for it, and Mosquitto refuses the
client (CONNACK 5, MQTT 5 0x87). kite used to let in any client that sent a
username; these tests fail on that kite and pass on Mosquitto."""

import pytest

import mqtt5raw as m5
import mqttraw

CONF = "allow_anonymous false\nlog_dest stderr\nlog_type all\n"


@pytest.mark.parametrize("password", [None, "anything"])
def test_username_without_password_file_is_refused(broker_factory, password):
    b = broker_factory(CONF)
    with mqttraw.RawClient(b.port) as c:
        c.send(mqttraw.connect("u1", username="someone", password=password))
        ack = c.expect(mqttraw.CONNACK)
        assert ack.rc == 5
        c.wait_closed()


def test_username_without_password_file_is_refused_mqtt5(broker_factory):
    b = broker_factory(CONF)
    c = m5.Client5(b.port)
    ack = c.connect("u5", username="someone", password="x")
    assert ack.rc == m5.NOT_AUTHORIZED
    c.wait_closed()
    c.close()


def test_no_username_is_refused(broker_factory):
    b = broker_factory(CONF)
    with mqttraw.RawClient(b.port) as c:
        c.send(mqttraw.connect("anon"))
        assert c.expect(mqttraw.CONNACK).rc == 5


def test_anonymous_listener_still_takes_a_username(broker_factory):
    """allow_anonymous true without a password file: a username is just a
    name (Mosquitto accepts it), and the client works."""
    b = broker_factory("allow_anonymous true\n")
    with mqttraw.RawClient(b.port) as c:
        c.send(mqttraw.connect("named", username="someone", password="x"))
        assert c.expect(mqttraw.CONNACK).rc == 0
        c.subscribe([("a/b", 0)])
        c.publish("a/b", b"hi")
        assert c.expect_publish().payload == b"hi"
