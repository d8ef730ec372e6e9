"""Real clients for the tests: paho-mqtt 1.6.1, mosquitto_pub/_sub, and
small patterns built on the raw client (a bystander that proves the broker
still serves others, a subscriber thread that acks and records)."""

import queue
import subprocess
import threading
import time

import paho.mqtt.client as mqtt

import mqttraw
from harness import HOST, wait_for


# --- paho -------------------------------------------------------------------

class Paho:
    """A connected paho client with its network loop in a thread. Received
    messages land in .messages (a queue of paho MQTTMessage)."""

    def __init__(self, port, client_id="", clean=True, keepalive=60,
                 username=None, password=None, will=None, timeout=5.0):
        self.c = mqtt.Client(client_id=client_id, clean_session=clean,
                             protocol=mqtt.MQTTv311)
        self.messages = queue.Queue()
        self.connack = queue.Queue()
        self.disconnected = threading.Event()
        self.c.on_connect = lambda c, u, flags, rc: self.connack.put((flags, rc))
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_disconnect = lambda c, u, rc: self.disconnected.set()
        if username is not None:
            self.c.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain = will
            self.c.will_set(topic, payload, qos, retain)
        self.c.connect(HOST, port, keepalive)
        self.c.loop_start()
        flags, rc = self.connack.get(timeout=timeout)
        self.session_present = bool(flags.get("session present"))
        self.rc = rc

    def subscribe(self, topic, qos=0, timeout=5.0):
        done = threading.Event()
        self.c.on_subscribe = lambda c, u, mid, granted: done.set()
        self.c.subscribe(topic, qos)
        assert done.wait(timeout), "no SUBACK"

    def publish(self, topic, payload, qos=0, retain=False, timeout=5.0):
        info = self.c.publish(topic, payload, qos, retain)
        info.wait_for_publish(timeout)
        assert info.is_published(), "paho publish not completed"

    def get(self, timeout=5.0):
        return self.messages.get(timeout=timeout)

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


# --- mosquitto_pub / mosquitto_sub ----------------------------------------

def mosquitto_pub(port, topic, message, qos=0, retain=False, client_id=None,
                  timeout=10):
    cmd = ["mosquitto_pub", "-h", HOST, "-p", str(port), "-V", "mqttv311",
           "-t", topic, "-m", message, "-q", str(qos)]
    if retain:
        cmd.append("-r")
    if client_id:
        cmd += ["-i", client_id]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=timeout, text=True)
    assert r.returncode == 0, "mosquitto_pub failed: %s" % r.stderr
    return r


def mosquitto_sub_start(port, topics, count, qos=0, verbose=True, extra=()):
    """Starts mosquitto_sub exiting after `count` messages (-C). With
    verbose, each line is "topic payload". Returns the Popen."""
    cmd = ["mosquitto_sub", "-h", HOST, "-p", str(port), "-V", "mqttv311",
           "-C", str(count), "-q", str(qos), "-W", "10"]
    if verbose:
        cmd.append("-v")
    for t in ([topics] if isinstance(topics, str) else topics):
        cmd += ["-t", t]
    cmd += list(extra)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


# --- raw-client patterns ----------------------------------------------------

class Bystander:
    """A well-behaved client connected before something bad happens; after,
    round_trip() proves the broker still serves it."""

    def __init__(self, port, name="bystander"):
        self.topic = "bystander/" + name
        self.c = mqttraw.RawClient(port)
        ack = self.c.connect(name)
        assert ack.rc == 0
        assert self.c.subscribe([(self.topic, 1)]) == [1]
        self.n = 0

    def round_trip(self):
        self.n += 1
        payload = b"still-alive-%d" % self.n
        self.c.send(mqttraw.publish(self.topic, payload, qos=1, pid=self.n))
        got_ack = got_msg = False
        deadline = time.monotonic() + 5
        while not (got_ack and got_msg):
            p = self.c.recv(max(0.05, deadline - time.monotonic()))
            if p.type == mqttraw.PUBACK and p.pid == self.n:
                got_ack = True
            elif p.type == mqttraw.PUBLISH and p.payload == payload:
                self.c.ack(p)
                got_msg = True
        return True

    def close(self):
        self.c.close()


class Recorder(threading.Thread):
    """Reads PUBLISHes from a raw client in a thread, acks them, and records
    (topic, payload, qos, dup, retain). Stops at close or EOF; a close by
    the broker before stop() is an error (wait_count raises it)."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.c = client
        self.got = []
        self.lock = threading.Lock()
        self.error = None
        self.stopping = False

    def run(self):
        try:
            while not self.stopping:
                try:
                    p = self.c.recv(0.2)
                except mqttraw.Timeout:
                    continue
                if p.type != mqttraw.PUBLISH:
                    continue
                if p.qos == 1:
                    self.c.send(mqttraw.puback(p.pid))
                elif p.qos == 2:
                    raise AssertionError("Recorder does not do QoS 2")
                with self.lock:
                    self.got.append(p)
        except mqttraw.Closed as e:
            if not self.stopping:
                self.error = AssertionError(
                    "broker closed the subscriber's connection (%s) after %d "
                    "messages" % (e, self.count()))
        except Exception as e:  # reported by the test through .error
            self.error = e

    def count(self):
        with self.lock:
            return len(self.got)

    def messages(self):
        with self.lock:
            return list(self.got)

    def wait_count(self, n, timeout=10.0):
        wait_for(lambda: self.error is not None or self.count() >= n, timeout,
                 what="%d messages (have %d)" % (n, self.count()))
        if self.error:
            raise self.error

    def stop(self):
        self.stopping = True
        self.join(2)


def fan_test(port, n_pubs, n_subs, per_pub, qos, round_size, prefix="ord"):
    """n_pubs publishers each send per_pub messages to "<prefix>/<i>"; each
    of n_subs subscribers to "<prefix>/#" must get every message of every
    publisher, in that publisher's order. Publishers go in rounds of
    round_size messages each, and the next round starts once every
    subscriber has the previous one: a modest rate that never overflows a
    subscriber's queue (max_queued_messages) yet keeps all publishers busy
    at once. Returns the recorders."""
    subs = []
    for i in range(n_subs):
        c = mqttraw.RawClient(port)
        assert c.connect("%s-sub-%d" % (prefix, i)).rc == 0
        assert c.subscribe([(prefix + "/#", qos)]) == [qos]
        r = Recorder(c)
        r.start()
        subs.append(r)
    pubs = []
    for i in range(n_pubs):
        c = mqttraw.RawClient(port)
        assert c.connect("%s-pub-%d" % (prefix, i)).rc == 0
        pubs.append(c)
    try:
        for start in range(0, per_pub, round_size):
            end = min(per_pub, start + round_size)
            for i, p in enumerate(pubs):
                p.send(b"".join(
                    mqttraw.publish("%s/%d" % (prefix, i), b"%d:%d" % (i, seq),
                                    qos=qos, pid=seq % 65535 + 1)
                    for seq in range(start, end)))
            if qos:
                for p in pubs:
                    for _ in range(end - start):
                        p.expect(mqttraw.PUBACK)
            for r in subs:
                r.wait_count(end * n_pubs, timeout=15)
        for r in subs:
            r.stop()
            if r.error:
                raise r.error
        for n, r in enumerate(subs):
            per = {}
            for m in r.messages():
                assert m.qos == qos
                i, seq = m.payload.split(b":")
                assert m.topic == "%s/%d" % (prefix, int(i))
                per.setdefault(int(i), []).append(int(seq))
            for i in range(n_pubs):
                got = per.get(i, [])
                assert got == list(range(per_pub)), (
                    "subscriber %d, publisher %d: %d messages, first wrong at %s"
                    % (n, i, len(got), next((k for k, v in enumerate(got) if v != k), len(got))))
        return subs
    finally:
        for r in subs:
            r.stopping = True
            r.c.close()
        for p in pubs:
            p.close()
