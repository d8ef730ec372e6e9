"""Message order: per publisher and topic, messages arrive in the order
sent (MQTT 3.1.1 section 4.6), none lost."""

import pytest

from clients import fan_test

QUIET = "allow_anonymous true\nlog_dest stderr\nlog_type error\n"


@pytest.mark.timeout(60)
def test_qos1_2000_messages_arrive_in_order(broker_factory):
    b = broker_factory(QUIET)
    fan_test(b.port, n_pubs=1, n_subs=1, per_pub=2000, qos=1, round_size=200)


@pytest.mark.kite_only("shards: publishers and subscribers spread over shards")
@pytest.mark.timeout(90)
@pytest.mark.parametrize("qos", [1, 0])
def test_publishers_and_subscribers_on_many_shards_keep_order(broker_factory, qos):
    b = broker_factory(QUIET + "shards 4\n")
    fan_test(b.port, n_pubs=8, n_subs=8, per_pub=400, qos=qos, round_size=50)
