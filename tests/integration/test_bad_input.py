"""Malformed and forbidden input: the offending connection is closed, and
only that one (MQTT 3.1.1 section 4.8: "the Server MUST close the Network
Connection"). Each case checks that a client connected before it still
gets a publish/receive round trip afterwards."""

import re
import socket
import time

import pytest

import harness
import mqttraw
from clients import Bystander
from mqttraw import RawClient, mqtt_str, packet, varint

# name -> bytes sent after a successful CONNECT
AFTER_CONNECT = {
    # A remaining length with a 5th length byte.
    "remaining_length_of_5_bytes": bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
    "subscribe_reserved_flags_0": mqttraw.subscribe(1, [("a", 0)], flags=0),
    "unsubscribe_reserved_flags_0": mqttraw.unsubscribe(1, ["a"], flags=0),
    "pubrel_reserved_flags_0": mqttraw.pubrel(1, flags=0),
    "invalid_utf8_in_topic": mqttraw.publish(b"a/\xff\xfe", b"x"),
    "utf16_surrogate_in_topic": mqttraw.publish(b"a/\xed\xa0\x80", b"x"),
    "nul_character_in_topic": mqttraw.publish(b"a/\x00b", b"x"),
    "empty_publish_topic": mqttraw.publish("", b"x"),
    "plus_wildcard_in_publish_topic": mqttraw.publish("a/+", b"x"),
    "hash_wildcard_in_publish_topic": mqttraw.publish("a/#", b"x"),
    "publish_qos_3": bytes([0x36]) + varint(5) + mqtt_str("ab") + b"x",
    "publish_packet_id_0": mqttraw.publish("a", b"x", qos=1, pid=0),
    "subscribe_packet_id_0": mqttraw.subscribe(0, [("a", 0)]),
    "subscribe_without_filters": packet(mqttraw.SUBSCRIBE, 2, b"\x00\x01"),
    "subscribe_qos_3": mqttraw.subscribe(1, [("a", 3)]),
    "subscribe_hash_not_last": mqttraw.subscribe(1, [("a/#/b", 0)]),
    "subscribe_plus_within_level": mqttraw.subscribe(1, [("a+", 0)]),
    "packet_type_0": bytes([0x00, 0x00]),
    "packet_type_15": bytes([0xF0, 0x00]),
    "second_connect": mqttraw.connect("bad-twice"),
}

# name -> bytes sent as the very first packet
AS_FIRST_PACKET = {
    "first_packet_not_connect": mqttraw.subscribe(1, [("a", 0)]),
    "connect_reserved_flag_bit_set": mqttraw.connect("bad", flags=0x03),
    "connect_fixed_header_flags_set": bytes([0x11]) + mqttraw.connect("bad")[1:],
    "connect_password_without_username": mqttraw.connect("bad", password=b"pw"),
    "connect_will_qos_3": mqttraw.connect("bad", will=("w", b"x", 3, False)),
}


@pytest.mark.parametrize("name", sorted(AFTER_CONNECT))
def test_bad_packet_after_connect_closes_only_that_connection(broker, name):
    by = Bystander(broker.port)
    with RawClient(broker.port) as c:
        assert c.connect("bad-" + name).rc == 0
        c.send(AFTER_CONNECT[name])
        c.expect_closed(3)  # without an answer
    by.round_trip()


@pytest.mark.parametrize("name", sorted(AS_FIRST_PACKET))
def test_bad_first_packet_closes_only_that_connection(broker, name):
    by = Bystander(broker.port)
    with RawClient(broker.port) as c:
        c.send(AS_FIRST_PACKET[name])
        c.expect_closed(3)  # without an answer
    by.round_trip()


@pytest.mark.timeout(25)
def test_half_packet_then_stall_closed_by_keepalive(broker):
    earliest, latest = harness.keepalive_close_window(broker.flavour, 1)
    by = Bystander(broker.port)
    c = RawClient(broker.port)
    assert c.connect("stall", keepalive=1).rc == 0
    c.send(mqttraw.publish("a/b", b"x" * 100)[:20])  # 20 of 107 bytes
    start = time.monotonic()
    c.expect_closed(latest)
    assert time.monotonic() - start >= earliest
    by.round_trip()


@pytest.mark.kite_only("kite's log names the peer and the reason")
@pytest.mark.parametrize("name", ["remaining_length_of_5_bytes", "invalid_utf8_in_topic",
                                  "packet_type_15", "second_connect"])
def test_bad_input_log_names_peer_address_and_reason(broker, name):
    with RawClient(broker.port) as c:
        c.connect("bad-log")
        peer = "127.0.0.1:%d" % c.local_port
        c.send(AFTER_CONNECT[name])
        c.expect_closed(3)  # without an answer

    def line():
        for l in broker.output().splitlines():
            if peer in l and not re.search(r"New (client|connection)", l):
                return l
    text = harness.wait_for(line, 3, what="a log line naming %s" % peer)
    # Something is said after the address: the reason.
    assert len(text.split(peer, 1)[1].strip(" .:,()")) >= 5, text



def test_bad_packet_while_deliveries_are_stuck_in_flight(broker):
    # The client stops reading while big messages pour in (kite's send to it
    # waits on a full socket), then sends garbage: kite closes it with a
    # send still in flight, and the queue under that send must stay valid
    # until the send completes.
    by = Bystander(broker.port)
    sub = RawClient(broker.port)
    sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert sub.connect("stuck-reader").rc == 0
    assert sub.subscribe([("stuck/#", 0)]) == [0]
    with RawClient(broker.port) as pub:
        assert pub.connect("stuck-pub").rc == 0
        for i in range(64):
            pub.send(mqttraw.publish("stuck/t", bytes([i % 251]) * 65536))
        pub.ping()
    # Stuck: the broker's end of the subscriber's connection holds bytes
    # the subscriber's full receive window does not take.
    harness.wait_for(
        lambda: (harness.tcp_socket(broker.port, sub.local_port) or {}).get("tx_queue", 0) > 0,
        5, what="a send to the subscriber stuck on its full socket")
    since = broker.mark()
    sub.send(bytes([0x00, 0x00]))  # packet type 0: protocol error
    sub.close()
    broker.wait_client_gone("stuck-reader", since)
    by.round_trip()
    assert broker.alive()
