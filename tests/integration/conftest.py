"""Integration harness: runs the broker under test as a real process on a
free 127.0.0.1 port and talks to it with real clients.

Contract:
- The broker is $KITE_BIN (default: build/kite in this repository if it
  exists; otherwise every test is skipped). A binary whose basename is
  "mosquitto" is Mosquitto (2.0.11 is the reference): kite-only tests are
  skipped and kite-only config lines (`shards`) are stripped. Setting
  KITE_ONLY_FORCE=1 runs kite-only tests anyway (to check a test's own logic
  against Mosquitto; kite-specific assertions then fail by design).
- `broker_factory(conf)` starts a broker with `listener PORT 127.0.0.1`
  followed by `conf` ({dir} and {port} are substituted), waits until the
  port listens, captures stdout+stderr, and stops it at teardown: SIGTERM,
  SIGKILL after 5 s, and the test errors unless the broker was still alive
  and exited 0.
- Every test phase has a hard timeout via SIGALRM (default 30 s for the
  test body, `@pytest.mark.timeout(N)` to change it): nothing hangs CI.
"""

import os
import signal

import pytest

import harness

BIN = harness.broker_bin()
FLAVOUR = harness.flavour(BIN) if BIN else None
FORCE_KITE_ONLY = os.environ.get("KITE_ONLY_FORCE") == "1"

DEFAULT_TEST_TIMEOUT_S = 30
FIXTURE_TIMEOUT_S = 20

# What most tests run with: anonymous allowed, every log line on stderr.
DEFAULT_CONF = "allow_anonymous true\nlog_dest stderr\nlog_type all\n"


def pytest_configure(config):
    # Skips are a first-class outcome: list each with its reason.
    if "s" not in config.option.reportchars and "a" not in config.option.reportchars:
        config.option.reportchars += "s"
    config.addinivalue_line(
        "markers", "kite_only(reason): needs kite (skipped under Mosquitto)")
    config.addinivalue_line(
        "markers", "timeout(seconds): hard timeout of the test body (default %d)"
        % DEFAULT_TEST_TIMEOUT_S)


def pytest_report_header(config):
    return "broker under test: %s (%s)" % (BIN or "none", FLAVOUR or "-")


def pytest_collection_modifyitems(config, items):
    if BIN is None:
        skip = pytest.mark.skip(reason="no broker to test: set KITE_BIN or build build/kite")
        for item in items:
            item.add_marker(skip)
        return
    if FLAVOUR == "mosquitto" and not FORCE_KITE_ONLY:
        for item in items:
            m = item.get_closest_marker("kite_only")
            if m:
                why = m.args[0] if m.args else "kite-specific behaviour"
                item.add_marker(pytest.mark.skip(reason="kite only: " + why))


class HardTimeout(Exception):
    pass


def _with_alarm(seconds, what):
    def on_alarm(signum, frame):
        raise HardTimeout("%s exceeded its hard timeout of %ss" % (what, seconds))
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    return old


def _clear_alarm(old):
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    old = _with_alarm(FIXTURE_TIMEOUT_S, "setup")
    try:
        yield
    finally:
        _clear_alarm(old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    m = item.get_closest_marker("timeout")
    seconds = int(m.args[0]) if m else DEFAULT_TEST_TIMEOUT_S
    old = _with_alarm(seconds, "test")
    try:
        yield
    finally:
        _clear_alarm(old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    old = _with_alarm(FIXTURE_TIMEOUT_S, "teardown")
    try:
        yield
    finally:
        _clear_alarm(old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of each broker's output to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, b in enumerate(getattr(item, "_brokers", [])):
            rep.sections.append(("broker %d output (%s)" % (i, " ".join(b.cmd)),
                                 b.output()[-6000:]))


@pytest.fixture
def flavour():
    """"kite" or "mosquitto"."""
    return FLAVOUR


@pytest.fixture
def adapt_config():
    """Turns a kite config into what the broker under test accepts: for
    Mosquitto, `shards` lines go, and when running as root `user root` keeps
    Mosquitto from dropping to the `mosquitto` user (which could not write
    the test's log and pid files)."""
    def adapt(text):
        if FLAVOUR != "mosquitto":
            return text
        text = harness.strip_kite_only(text)
        if os.geteuid() == 0:
            # Appended, so that line numbers of the test's text stay true.
            text = text + ("" if text.endswith("\n") or not text else "\n") + "user root\n"
        return text
    return adapt


@pytest.fixture
def broker_factory(request, tmp_path, adapt_config):
    """start(conf=DEFAULT_CONF, listener=True, args=None, port=None,
    wait=True, raw=False, env=None, nofile=None) -> harness.Broker (env:
    added to the broker's; nofile: its RLIMIT_NOFILE, `ulimit -n`). Brokers
    still running at teardown are stopped with SIGTERM and must exit 0."""
    started = []
    request.node._brokers = started

    def start(conf=DEFAULT_CONF, listener=True, args=None, port=None,
              wait=True, raw=False, env=None, nofile=None):
        n = len(started)
        workdir = tmp_path / ("broker%d" % n)
        workdir.mkdir()
        if port is None:
            port = harness.free_port()
        text = conf
        if listener:
            text = "listener {port} 127.0.0.1\n" + text
        text = text.replace("{port}", str(port)).replace("{dir}", str(workdir))
        if not raw:
            text = adapt_config(text)
        b = harness.Broker(BIN, FLAVOUR, workdir, text, port=port, args=args,
                           wait_port=wait, env=env, nofile=nofile)
        started.append(b)
        return b

    yield start

    problems = []
    for b in started:
        if b.stopped:
            continue
        if not b.alive():
            problems.append("broker exited by itself during the test (status %s)"
                            % b.proc.returncode)
            b.stop()
            continue
        rc = b.stop(signal.SIGTERM)
        if rc != 0:
            problems.append("broker exit status on SIGTERM was %s, expected 0" % rc)
    if problems:
        tail = "\n".join(b.output()[-3000:] for b in started)
        pytest.fail("; ".join(problems) + "\n--- broker output ---\n" + tail,
                    pytrace=False)


@pytest.fixture
def broker(broker_factory):
    """A broker with DEFAULT_CONF."""
    return broker_factory()
