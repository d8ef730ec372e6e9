"""MQTT 5.0 as a user would do it: paho-mqtt 1.6.1 with protocol=MQTTv5
(request / response with properties, session resume, shared subscription)."""

import queue
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from harness import HOST


class Paho5:
    def __init__(self, port, client_id, clean_start=True, session_expiry=None):
        self.c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)
        self.messages = queue.Queue()
        self.connack = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: self.connack.put((flags, rc, props))
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        props = None
        if session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
        self.c.connect(HOST, port, 60, clean_start=clean_start, properties=props)
        self.c.loop_start()
        self.flags, self.rc, self.props = self.connack.get(timeout=5)

    def subscribe(self, topic, qos=1, props=None):
        done = threading.Event()
        self.c.on_subscribe = lambda c, u, mid, codes, p: done.set()
        self.c.subscribe(topic, qos, properties=props)
        assert done.wait(5), "no SUBACK"

    def publish(self, topic, payload, qos=1, props=None):
        info = self.c.publish(topic, payload, qos, properties=props)
        info.wait_for_publish(5)
        assert info.is_published()

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_mqtt5_paho_request_response(broker):
    responder = Paho5(broker.port, "responder")
    requester = Paho5(broker.port, "requester")
    try:
        assert responder.rc == 0 and requester.rc == 0
        assert responder.props.ReceiveMaximum == 20 and responder.props.TopicAliasMaximum == 10
        responder.subscribe("svc/req")
        requester.subscribe("svc/resp/requester")
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = "svc/resp/requester"
        p.CorrelationData = b"id-42"
        p.UserProperty = [("trace", "abc"), ("trace", "def")]
        requester.publish("svc/req", b"ping", props=p)
        req = responder.messages.get(timeout=5)
        assert req.payload == b"ping"
        assert req.properties.ResponseTopic == "svc/resp/requester"
        assert req.properties.UserProperty == [("trace", "abc"), ("trace", "def")]
        rp = Properties(PacketTypes.PUBLISH)
        rp.CorrelationData = req.properties.CorrelationData
        responder.publish(req.properties.ResponseTopic, b"pong", props=rp)
        resp = requester.messages.get(timeout=5)
        assert resp.payload == b"pong" and resp.properties.CorrelationData == b"id-42"
    finally:
        responder.stop()
        requester.stop()


def test_mqtt5_paho_session_resume_with_expiry(broker):
    c = Paho5(broker.port, "paho-sess", session_expiry=30)
    c.subscribe("paho/sess", qos=1)
    c.stop()
    pub = Paho5(broker.port, "paho-sess-pub")
    pub.publish("paho/sess", b"while-away")
    pub.stop()
    c = Paho5(broker.port, "paho-sess", clean_start=False, session_expiry=30)
    try:
        assert c.flags.get("session present") == 1
        assert c.messages.get(timeout=5).payload == b"while-away"
    finally:
        c.stop()


def test_mqtt5_paho_subscription_identifier(broker):
    c = Paho5(broker.port, "paho-sid")
    try:
        sp = Properties(PacketTypes.SUBSCRIBE)
        sp.SubscriptionIdentifier = 12
        c.subscribe("paho/sid/#", props=sp)
        c.publish("paho/sid/x", b"x")
        m = c.messages.get(timeout=5)
        assert m.properties.SubscriptionIdentifier == [12]
    finally:
        c.stop()
