"""Helpers for the hostile-traffic tests (test_hostile_*.py): what the
broker process costs, read from /proc (RSS, CPU time, open fds), attack
sockets that never block the test, and a well-behaved paho client that
proves the broker still serves others during and after an attack.

Figures these tests measured on kite and Mosquitto 2.0.11 are in
docs/HOSTILE.md."""

import os
import queue
import select
import socket
import threading
import time

import paho.mqtt.client as mqtt

from harness import HOST

CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024


# --- the broker process, from /proc ------------------------------------------

def rss_bytes(pid):
    """VmRSS of pid in bytes (0 once the process is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid):
    """utime + stime of pid (every thread), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def open_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


class RssPeak(threading.Thread):
    """Samples the RSS of pid every `interval` seconds from start() to
    stop(); .base is the first sample, .peak the largest."""

    def __init__(self, pid, interval=0.02):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.base = rss_bytes(pid)
        self.peak = self.base
        self._stop_evt = threading.Event()

    def run(self):
        while not self._stop_evt.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop_evt.wait(self.interval)

    def stop(self):
        self._stop_evt.set()
        self.join(2)
        self.peak = max(self.peak, rss_bytes(self.pid))
        return self.peak

    @property
    def growth(self):
        return self.peak - self.base

    def __str__(self):
        return "RSS %.1f MB -> peak %.1f MB (+%.1f MB)" % (
            self.base / MB, self.peak / MB, self.growth / MB)


def cpu_share(pid, seconds):
    """Fraction of one core pid used over the next `seconds` (wall)."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return (c1 - c0) / (t1 - t0)


# --- attack sockets ----------------------------------------------------------

def send_bounded(sock, data, deadline, chunk=16384):
    """Sends as much of data as the peer takes before `deadline` (monotonic)
    without ever blocking past it; stops at a reset or close. Returns the
    number of bytes handed to the kernel."""
    sent = 0
    view = memoryview(data)
    while sent < len(data):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(min(remaining, 1.0))
        try:
            n = sock.send(view[sent:sent + chunk])
        except (socket.timeout, BlockingIOError):
            continue
        except OSError:  # reset, broken pipe, TLS error: the broker closed it
            break
        if n == 0:
            break
        sent += n
    return sent


def closed_by_peer(sock):
    """Non-blocking: True if the peer has closed or reset the connection
    (EOF or RST readable now); bytes the peer sent are read and dropped."""
    try:
        r, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not r:
        return False
    try:
        sock.setblocking(False)
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


# --- a well-behaved client -----------------------------------------------------

class GoodClient:
    """A paho (MQTT 3.1.1) client that connects, subscribes to its own topic
    at QoS 1, and round-trips QoS 1 messages through the broker. Raises
    AssertionError when any step does not complete in `timeout`. `tls` is
    a dict for paho's tls_set (ca_certs=...) or None."""

    def __init__(self, port, name, timeout=5.0, tls=None, host=HOST):
        self.name = name
        self.topic = "good/" + name
        self.timeout = timeout
        self.n = 0
        self.msgs = queue.Queue()
        self.events = queue.Queue()
        self.c = mqtt.Client(client_id=name, clean_session=True,
                             protocol=mqtt.MQTTv311)
        self.c.on_connect = lambda c, u, f, rc: self.events.put(("connack", rc))
        self.c.on_subscribe = lambda c, u, mid, g: self.events.put(("suback", g))
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        if tls:
            self.c.tls_set(**tls)
        self.started = False
        try:
            self.c.connect(host, port, 60)
            self.c.loop_start()
            self.started = True
            what, rc = self._event(timeout, "CONNACK")
            assert rc == 0, "%s: CONNACK %s" % (name, rc)
            self.c.subscribe(self.topic, 1)
            what, granted = self._event(timeout, "SUBACK")
            assert tuple(granted) == (1,), "%s: SUBACK %r" % (name, granted)
        except BaseException:
            self.close()
            raise

    def _event(self, timeout, what):
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("%s: no %s within %.0fs" % (self.name, what, timeout))
        except OSError as e:
            raise AssertionError("%s: %s while waiting for %s" % (self.name, e, what))

    def round_trip(self):
        """Publishes one QoS 1 message to its topic and receives it back."""
        self.n += 1
        payload = b"%s-%d" % (self.name.encode(), self.n)
        info = self.c.publish(self.topic, payload, 1)
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("%s: message %d did not come back within %.0fs"
                                     % (self.name, self.n, self.timeout))
            try:
                m = self.msgs.get(timeout=remaining)
            except queue.Empty:
                continue
            if m.payload == payload:
                break
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert info.is_published(), "%s: no PUBACK for message %d" % (self.name, self.n)
        return True

    def close(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        if self.started:
            self.c.loop_stop()
            self.started = False


def good_round_trip(port, name, **kw):
    """A fresh well-behaved client connects, subscribes, publishes and
    receives its message, then disconnects."""
    g = GoodClient(port, name, **kw)
    try:
        g.round_trip()
    finally:
        g.close()


def good_round_trip_within(port, name, seconds, **kw):
    """good_round_trip, tried again until `seconds` have passed: for a
    broker that is still letting go of the connections an attack left."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return good_round_trip(port, name, **kw)
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
