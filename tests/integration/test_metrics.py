"""The metrics listener (`listener PORT ADDR` + `protocol metrics`):
Prometheus text at GET /metrics, figures checked against the load
generator's own counts, and what a bad or slow scraper gets."""

import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import harness
from conftest import BIN
from mqttraw import CONNACK, PUBLISH, SUBACK, RawClient, connect, publish, subscribe

pytestmark = pytest.mark.kite_only("Mosquitto has no metrics listener")

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.eE+]+|NaN|[+-]Inf)$')
LABEL = re.compile(r'^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"$')


def metrics_conf(mport, shards=2, extra=""):
    return ("allow_anonymous true\nshards %d\n%s"
            "listener %d 127.0.0.1\nprotocol metrics\n" % (shards, extra, mport))


def start(broker_factory, shards=2, extra=""):
    mport = harness.free_port()
    b = broker_factory(metrics_conf(mport, shards, extra))
    harness.wait_for(lambda: harness.listening(mport), what="metrics port")
    return b, mport


def http(port, request, timeout=5.0):
    """Sends raw bytes, reads until the broker closes: (status, headers, body)."""
    with socket.create_connection((harness.HOST, port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def parse_exposition(text):
    """Strict enough for Prometheus 0.0.4: every sample belongs to the
    family its # TYPE line declared just before, names and labels are
    well formed, no series twice. Returns {(name, frozenset(labels)): v}."""
    series = {}
    types = {}
    current = None
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert NAME.match(name), line
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            assert typ in ("counter", "gauge"), line
            assert name not in types, "family declared twice: " + name
            types[name] = typ
            current = name
            continue
        m = SAMPLE.match(line)
        assert m, "bad sample line: %r" % line
        name, labels, value = m.groups()
        assert name == current, "%s outside its family %s" % (name, current)
        lab = {}
        if labels:
            for part in labels[1:-1].split(","):
                lm = LABEL.match(part)
                assert lm, line
                lab[lm.group(1)] = lm.group(2)
        key = (name, frozenset(lab.items()))
        assert key not in series, "series twice: " + line
        series[key] = float(value)
    return series, types


def scrape(port):
    status, headers, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    series, _ = parse_exposition(body.decode())
    return series


def val(series, name, **labels):
    return series[(name, frozenset((k, str(v)) for k, v in labels.items()))]


def per_shard_sum(series, name, **labels):
    return sum(v for (n, lab), v in series.items() if n == name
               and all((k, str(x)) in lab for k, x in labels.items()))


def bench_bin():
    for cand in (Path(BIN).parent / "bench" / "kite-bench",
                 harness.REPO / "build" / "kite-bench",
                 harness.REPO / "build" / "bench" / "kite-bench"):
        if cand.exists():
            return str(cand)
    pytest.skip("no kite-bench next to %s (make BUILD=... %s/bench/kite-bench)"
                % (BIN, Path(BIN).parent))


def run_bench(port, *args, timeout=60):
    return subprocess.Popen([bench_bin(), "--port", str(port), "--quiet"] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def bench_result(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    return json.loads(out.splitlines()[0])


def test_metrics_endpoint_serves_prometheus_text_with_every_family(broker_factory):
    b, mport = start(broker_factory, shards=2)
    status, headers, body = http(mport, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["connection"] == "close"
    series, types = parse_exposition(body.decode())
    assert val(series, "kite_shards") == 2
    for name in ("kite_clients_connected", "kite_messages_received_total",
                 "kite_messages_sent_total", "kite_bytes_received_total",
                 "kite_bytes_sent_total", "kite_deliveries_total",
                 "kite_queued_messages", "kite_inflight_messages"):
        assert (name, frozenset()) in series
        shard_name = name.replace("kite_", "kite_shard_", 1)
        assert {dict(l)["shard"] for (n, l) in series if n == shard_name} == {"0", "1"}
    for reason in ("offline", "queue_full", "undeliverable", "no_memory"):
        assert val(series, "kite_messages_dropped_total", reason=reason) == 0
    for result in ("ok", "error", "timeout"):
        assert (("kite_tls_handshakes_total",
                 frozenset({("result", result)})) in series)
    assert val(series, "kite_tls_connections", mode="kernel") == 0
    assert val(series, "kite_tls_connections", mode="userspace") == 0
    assert val(series, "kite_flood_filter_loaded") == 0
    assert val(series, "kite_persistence_enabled") == 0
    assert val(series, "process_resident_memory_bytes") > 1 << 20
    doc = (harness.REPO / "docs" / "METRICS.md").read_text()
    for family in types:
        base = family.replace("kite_shard_", "kite_", 1)
        assert "`%s`" % base in doc, family + " is not in docs/METRICS.md"
    assert types["kite_messages_received_total"] == "counter"
    assert types["kite_clients_connected"] == "gauge"
    # HEAD: the same headers, no body.
    status, headers, body = http(mport, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000
    # A query string is allowed, as Prometheus may add one.
    assert http(mport, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")[0] == 200
    b.wait_output(r"Opening listen socket on 127\.0\.0\.1:%d \(metrics" % mport)


@pytest.mark.timeout(90)
def test_metrics_match_the_load_generators_counts(broker_factory):
    b, mport = start(broker_factory, shards=2)
    before = scrape(mport)
    proc = run_bench(b.port, "--topology", "fanout", "--pubs", "2", "--subs", "3",
                     "--qos", "1", "--rate", "2000", "--warmup", "0.5",
                     "--duration", "2", "--payload", "100",
                     "--broker-pid", str(b.pid))
    # Scrapes during the load: answered, and counters never go back.
    last = before
    seen_connected = 0
    scrapes = 0
    while proc.poll() is None:
        now = scrape(mport)
        scrapes += 1
        for name in ("kite_messages_received_total", "kite_messages_sent_total",
                     "kite_deliveries_total", "kite_bytes_sent_total"):
            assert val(now, name) >= val(last, name)
        seen_connected = max(seen_connected, val(now, "kite_clients_connected"))
        last = now
        time.sleep(0.2)
    r = bench_result(proc)
    assert r["ok"], r["errors"]
    assert scrapes >= 5
    assert seen_connected == r["conns"] == 5
    after = harness.wait_for(
        lambda: (lambda s: s if val(s, "kite_clients_connected") == 0 else None)(scrape(mport)),
        what="clients gone from the metrics")
    got = lambda name: val(after, name) - val(before, name)
    assert r["lost"] == 0 and r["dups"] == 0 and r["received"] == r["expected"]
    assert got("kite_publish_received_total") == r["sent"]
    assert got("kite_deliveries_total") == r["expected"] == r["sent"] * 3
    assert got("kite_publish_sent_total") == r["received"]
    # Every packet, as $SYS counts them: CONNECT, SUBSCRIBE, PUBLISH,
    # PUBACK from subscribers, DISCONNECT in; CONNACK, SUBACK, PUBACK to
    # publishers, PUBLISH out.
    assert got("kite_messages_received_total") == (
        r["conns"] + 3 + r["sent"] + r["received"] + r["conns"])
    assert got("kite_messages_sent_total") == (
        r["conns"] + 3 + r["sent"] + r["received"])
    assert got("kite_bytes_received_total") > r["sent"] * 100
    assert got("kite_bytes_sent_total") > r["received"] * 100
    assert sum(v for (n, l), v in after.items()
               if n == "kite_messages_dropped_total") == 0
    assert val(after, "kite_queued_messages") == 0
    assert val(after, "kite_inflight_messages") == 0
    # The totals are the sums of the per-shard series.
    for name in ("kite_messages_received_total", "kite_messages_sent_total",
                 "kite_deliveries_total", "kite_bytes_sent_total"):
        assert per_shard_sum(after, name.replace("kite_", "kite_shard_", 1)) == val(after, name)


@pytest.mark.timeout(60)
def test_metrics_count_the_load_generators_connections(broker_factory):
    b, mport = start(broker_factory, shards=2)
    proc = run_bench(b.port, "--topology", "idle", "--conns", "60", "--hold", "4",
                     "--broker-pid", str(b.pid))
    s = harness.wait_for(
        lambda: (lambda s: s if val(s, "kite_clients_connected") == 60 else None)(scrape(mport)),
        timeout=20, what="60 connected clients in the metrics")
    assert per_shard_sum(s, "kite_shard_clients_connected") == 60
    assert val(s, "kite_sessions") == 60
    r = bench_result(proc)
    assert r["ok"], r["errors"]
    assert r["conns"] == 60
    harness.wait_for(lambda: val(scrape(mport), "kite_clients_connected") == 0,
                     what="clients gone")


def test_queued_and_inflight_gauges_and_drops_by_reason(broker_factory):
    b, mport = start(broker_factory, shards=1,
                     extra="max_inflight_messages 2\nmax_queued_messages 3\n")
    sub = RawClient(b.port)
    sub.send(connect("slow", clean=False))
    sub.expect(CONNACK)
    sub.send(subscribe(1, [("t", 1)]))
    sub.expect(SUBACK)
    # Two in flight (never acknowledged), three queued, the rest dropped.
    pub = RawClient(b.port)
    pub.send(connect("pub"))
    pub.expect(CONNACK)
    # QoS 0 goes out at once (at most max_queued_messages + in flight may
    # wait in the connection's output: a burst past that is dropped).
    for i in range(4):
        pub.send(publish("t", b"m%d" % i, qos=0))
    pub.send(publish("t", b"q1", qos=1, pid=1))
    for i in range(7):
        pub.send(publish("t", b"x%d" % i, qos=1, pid=10 + i))
    s = harness.wait_for(
        lambda: (lambda s: s if val(s, "kite_inflight_messages") == 2
                 and val(s, "kite_queued_messages") == 3 else None)(scrape(mport)),
        what="2 in flight, 3 queued")
    assert val(s, "kite_messages_dropped_total", reason="queue_full") == 3
    sub.close()
    pub.close()
    # Offline now: QoS 0 to it is dropped as offline.
    pub = RawClient(b.port)
    pub.send(connect("pub2"))
    pub.expect(CONNACK)
    pub.send(publish("t", b"gone", qos=0))
    harness.wait_for(lambda: val(scrape(mport), "kite_messages_dropped_total",
                                 reason="offline") == 1, what="offline drop")
    pub.close()


def test_bad_requests_get_a_clear_answer(broker_factory):
    b, mport = start(broker_factory)
    assert http(mport, b"GET /nope HTTP/1.1\r\n\r\n")[0] == 404
    assert http(mport, b"GET / HTTP/1.1\r\n\r\n")[0] == 404
    assert http(mport, b"GET /metricsx HTTP/1.1\r\n\r\n")[0] == 404
    st, hd, body = http(mport, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert st == 405 and hd["allow"] == "GET, HEAD"
    assert http(mport, b"DELETE /metrics HTTP/1.1\r\n\r\n")[0] == 405
    for bad in (b"HELLO\r\n\r\n", b"GET /metrics\r\n\r\n", b"GET /metrics SPDY/3\r\n\r\n",
                b"get /metrics HTTP/1.1\r\n\r\n", b"GET  /metrics HTTP/1.1\r\n\r\n",
                b"GET /metrics HTTP/1.1\x00\r\n\r\n"):
        assert http(mport, bad)[0] == 400, bad
    # An MQTT client on the metrics port is told off in HTTP and closed.
    assert http(mport, connect("c") + b"\n\n")[0] == 400
    # Oversized head: 431 after 8 KiB, whatever follows.
    big = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n"
    st, hd, body = http(mport, big)
    assert st == 431 and b"Too Large" in body
    # A head just under the bound is served.
    ok = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 7000 + b"\r\n\r\n"
    assert http(mport, ok)[0] == 200
    s = scrape(mport)
    assert val(s, "kite_metrics_requests_total", code=404) == 3
    assert val(s, "kite_metrics_requests_total", code=405) == 2
    assert val(s, "kite_metrics_requests_total", code=400) == 7
    assert val(s, "kite_metrics_requests_total", code=431) == 1


@pytest.mark.timeout(40)
def test_slowloris_is_answered_408_and_closed(broker_factory):
    b, mport = start(broker_factory)
    s = socket.create_connection((harness.HOST, mport), timeout=10)
    s.sendall(b"GET /metrics HTTP/1.1\r\n")
    t0 = time.monotonic()
    data = b""
    s.settimeout(0.5)
    while time.monotonic() - t0 < 12:
        try:
            s.sendall(b"X")  # one byte at a time, never the end of the head
        except OSError:
            break
        try:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        except socket.timeout:
            pass
    elapsed = time.monotonic() - t0
    s.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert 4 < elapsed < 9
    # A scraper that never reads its answer costs the broker 15 s at most.
    assert scrape(mport)  # still serving


@pytest.mark.timeout(60)
def test_scrapers_are_limited_and_memory_stays_bounded(broker_factory):
    b, mport = start(broker_factory, shards=2)

    def rss_kb():
        for l in open("/proc/%d/status" % b.pid):
            if l.startswith("VmRSS:"):
                return int(l.split()[1])

    scrape(mport)
    base = rss_kb()
    # Eight silent scrapers take every slot: the ninth hears 503.
    idle = [socket.create_connection((harness.HOST, mport)) for _ in range(8)]
    time.sleep(0.3)
    st, hd, body = http(mport, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert st == 503 and hd["retry-after"] == "1"
    for c in idle:
        c.close()
    harness.wait_for(lambda: http(mport, b"GET /metrics HTTP/1.1\r\n\r\n")[0] == 200,
                     what="a slot free again")
    # Many more connections than slots, each pushing a large head and
    # never reading: bounded by the slots, refused beyond them.
    socks = []
    for _ in range(60):
        try:
            c = socket.create_connection((harness.HOST, mport), timeout=2)
            c.setblocking(False)
            try:
                c.send(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 200000)
            except OSError:
                pass
            socks.append(c)
        except OSError:
            pass
    time.sleep(1.0)
    grown = rss_kb() - base
    for c in socks:
        c.close()
    assert grown < 8 * 1024, "RSS grew by %d KiB" % grown
    # MQTT is served all along.
    with RawClient(b.port) as c:
        c.send(connect("still-here"))
        c.expect(CONNACK)
    harness.wait_for(lambda: http(mport, b"GET /metrics HTTP/1.1\r\n\r\n")[0] == 200,
                     timeout=20, what="metrics served again")


# $SYS topic -> (metric name, labels). Every topic kite publishes under
# $SYS has a metric (docs/METRICS.md lists them).
SYS_TO_METRIC = {
    "$SYS/broker/version": ("kite_build_info", None),
    "$SYS/broker/uptime": ("kite_uptime_seconds", {}),
    "$SYS/broker/clients/connected": ("kite_clients_connected", {}),
    "$SYS/broker/clients/active": ("kite_clients_connected", {}),
    "$SYS/broker/clients/total": ("kite_sessions", {}),
    "$SYS/broker/clients/disconnected": ("kite_sessions_disconnected", {}),
    "$SYS/broker/messages/received": ("kite_messages_received_total", {}),
    "$SYS/broker/messages/sent": ("kite_messages_sent_total", {}),
    "$SYS/broker/bytes/received": ("kite_bytes_received_total", {}),
    "$SYS/broker/bytes/sent": ("kite_bytes_sent_total", {}),
    "$SYS/broker/subscriptions/count": ("kite_subscriptions", {}),
    "$SYS/broker/retained messages/count": ("kite_retained_messages", {}),
    "$SYS/broker/publish/messages/dropped": ("kite_messages_dropped_total", "sum"),
    "$SYS/broker/tls/kernel_offloaded": ("kite_tls_kernel_offloaded_total", {}),
    "$SYS/broker/clients/refused/max_connections":
        ("kite_clients_refused_total", {"reason": "max_connections"}),
    "$SYS/broker/clients/refused/no_resources":
        ("kite_clients_refused_total", {"reason": "no_resources"}),
    "$SYS/broker/persistence/bytes_written": ("kite_persistence_bytes_written_total", {}),
    "$SYS/broker/persistence/write_errors": ("kite_persistence_write_errors_total", {}),
    "$SYS/broker/persistence/compactions": ("kite_persistence_compactions_total", {}),
    "$SYS/broker/persistence/acknowledgements_withheld":
        ("kite_persistence_acknowledgements_withheld_total", {}),
    "$SYS/broker/flood_filter/passed": ("kite_flood_filter_passed_total", {}),
    "$SYS/broker/flood_filter/dropped/rate":
        ("kite_flood_filter_dropped_total", {"reason": "rate"}),
    "$SYS/broker/flood_filter/dropped/blocked":
        ("kite_flood_filter_dropped_total", {"reason": "blocked"}),
    "$SYS/broker/flood_filter/blocks_added": ("kite_flood_filter_blocks_added_total", {}),
    "$SYS/broker/flood_filter/sources_allowed":
        ("kite_flood_filter_sources_allowed_total", {}),
}


def metric_value(series, name, labels):
    if labels == "sum":
        return sum(v for (n, l), v in series.items() if n == name)
    return val(series, name, **labels)


def test_every_sys_topic_in_the_source_has_a_metric():
    src = (harness.REPO / "io" / "sys.c").read_text()
    topics = set(re.findall(r'"(\$SYS/[^"]+)"', src))
    assert topics, "no $SYS topic found in io/sys.c"
    assert topics - set(SYS_TO_METRIC) == set(), "no metric for these $SYS topics"
    doc = (harness.REPO / "docs" / "METRICS.md").read_text()
    for topic, (name, _) in SYS_TO_METRIC.items():
        assert name in doc, name + " is not in docs/METRICS.md"


@pytest.mark.timeout(40)
def test_every_sys_figure_has_a_metric_with_its_value(broker_factory):
    b, mport = start(broker_factory, shards=2,
                     extra="sys_interval 1\npersistence true\n"
                           "persistence_location {dir}/\n")
    with RawClient(b.port) as c:
        c.send(connect("sysreader"))
        c.expect(CONNACK)
        c.send(subscribe(1, [("$SYS/#", 0)]))
        c.expect(SUBACK)
        figures = {}
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            try:
                p = c.recv(timeout=0.5)
            except Exception:
                continue
            if p.type == PUBLISH:
                figures[p.topic] = p.payload.decode()
        series = scrape(mport)
    assert len(figures) >= 20, figures
    unmapped = set(figures) - set(SYS_TO_METRIC)
    assert not unmapped, "$SYS topics without a metric: %s" % unmapped
    for topic, payload in figures.items():
        name, labels = SYS_TO_METRIC[topic]
        if labels is None:
            assert val(series, name, version=payload.split()[-1]) == 1
            continue
        assert metric_value(series, name, labels) is not None
    # Figures that do not move while nothing happens agree exactly.
    for topic in ("$SYS/broker/clients/total", "$SYS/broker/subscriptions/count",
                  "$SYS/broker/retained messages/count",
                  "$SYS/broker/messages/received",
                  "$SYS/broker/clients/connected",
                  "$SYS/broker/persistence/write_errors"):
        name, labels = SYS_TO_METRIC[topic]
        assert float(figures[topic]) == metric_value(series, name, labels), topic


def test_tls_on_a_metrics_listener_is_refused(broker_factory, tmp_path):
    conf = tmp_path / "mt.conf"
    conf.write_text("listener %d 127.0.0.1\nprotocol metrics\n"
                    "certfile /nonexistent.pem\nkeyfile /nonexistent.key\n"
                    % harness.free_port())
    r = harness.run_cmd([BIN, "-c", str(conf)])
    assert r.returncode != 0
    assert "TLS on a metrics listener is not supported yet" in r.stderr + r.stdout


def test_grafana_dashboard_uses_only_metrics_kite_serves(broker_factory):
    b, mport = start(broker_factory)
    _, types = parse_exposition(http(mport, b"GET /metrics HTTP/1.1\r\n\r\n")[2].decode())
    dash = json.loads((harness.REPO / "docs" / "grafana-kite.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    used = set()
    for e in exprs:
        used |= set(re.findall(r"\b((?:kite|process)_[a-z_]+)\b", e))
    assert used and used <= set(types), used - set(types)


def test_tls_handshakes_and_connections_by_mode(broker_factory):
    import ssl
    import tlsutil
    mport = harness.free_port()
    conf = (tlsutil.tls_listener(extra="require_certificate false\n")
            + "allow_anonymous true\nlistener %d 127.0.0.1\nprotocol metrics\n" % mport)
    b, ports = tlsutil.start(broker_factory, conf)
    harness.wait_for(lambda: harness.listening(mport), what="metrics port")
    clients = [tlsutil.tls_connect(ports[0], ca=tlsutil.pki()["ca.pem"]) for _ in range(3)]
    # A client that does not trust the server: the handshake fails.
    bad = tlsutil.client_context(ca=tlsutil.pki()["ca.pem"])
    bad.check_hostname = False
    bad.verify_mode = ssl.CERT_NONE
    bad.maximum_version = ssl.TLSVersion.TLSv1_2
    bad.set_ciphers("aNULL")  # nothing the server offers
    try:
        tlsutil.tls_attempt(ports[0], ctx=bad)
    except ssl.SSLError:
        pass
    s = harness.wait_for(
        lambda: (lambda s: s if val(s, "kite_tls_handshakes_total", result="ok") == 3
                 and val(s, "kite_tls_handshakes_total", result="error") >= 1
                 else None)(scrape(mport)), what="handshake counts")
    kernel = val(s, "kite_tls_connections", mode="kernel")
    user = val(s, "kite_tls_connections", mode="userspace")
    assert kernel + user == 3
    assert kernel == val(s, "kite_tls_kernel_offloaded_total")
    for c in clients:
        c.close()
    harness.wait_for(lambda: (lambda s: val(s, "kite_tls_connections", mode="kernel")
                              + val(s, "kite_tls_connections", mode="userspace") == 0)
                     (scrape(mport)), what="TLS gauges back to 0")
