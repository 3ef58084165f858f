"""Shared helpers for sluice's integration tests.

Each tests/integration/test_NAME.py is a standalone script run with
/usr/bin/python3 from the repository root (tests/run.sh does that); it exits
0 (pass), 1 (fail) or 77 (skip). A test is a function taking a `Test`:

    from harness import Msg, Test
    def main(t):
        q = t.queue("events")      # durable queue (and table), removed at the end
        t.publish(q, [Msg(b"x", pika.BasicProperties(message_id="1"))])
        s = t.sluice("--queue", q, "--until-empty")
        t.eq(s.expect_exit(60), 0, "sluice exit status")
        t.check_ids_md5(q, {"1": md5(b"x")})
    Test.main(main)

Everything a test creates (queues, exchanges, tables, sluice processes) is
registered on the Test and removed when it ends, pass or fail. Checks print
what they verified; a failed check ends the test (or, inside
`with t.section(...)`, that section) with a message saying what was expected
and what was observed, and the test exits 1 (t.expect() records the failure
and goes on). sluice's output goes to build/test-logs/<test>.sluice-N.log;
the last lines are shown on failure.

Tests run against the shared servers of tests/run.sh; a test that kills or
restarts servers runs its own pair instead (Servers(dir, ports), then
t.use_servers()) and puts a Proxy it controls between sluice and a server
to cut, silence or refuse connections; t.on_cleanup() stops them at the end.
"""

import base64
import contextlib
import datetime
import hashlib
import json
import multiprocessing
import os
import secrets
import selectors
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from queue import SimpleQueue

import pika
import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[2]
# SLUICE_BIN: test another build (e.g. a sanitizer build) or a wrapper.
SLUICE = Path(os.environ.get("SLUICE_BIN") or REPO / "build" / "sluice")
# SLUICE_TEST_LOGS: where sluice logs go (tests/run.sh keeps sanitizer runs apart).
LOGDIR = Path(os.environ.get("SLUICE_TEST_LOGS") or REPO / "build" / "test-logs")
SERVERS = REPO / "tools" / "servers.sh"
SKIP = 77


class TestFailure(Exception):
    pass


class TestSkip(Exception):
    pass


class TestAborted(BaseException):
    """SIGTERM (the runner's timeout): not caught by sections."""


class Servers:
    """A PostgreSQL and RabbitMQ pair run by tools/servers.sh. Servers() is
    the shared pair of the test run (tests/run.sh exports its addresses);
    Servers(dir, pg_port, amqp_port) an independent pair with its data under
    dir, which a test starts, kills, restarts and stops itself (run()).
    env: RABBITMQ_URL, POSTGRES_DSN and SLUICE_PG_ADMIN_DSN of the pair."""

    KEYS = ("RABBITMQ_URL", "POSTGRES_DSN", "SLUICE_PG_ADMIN_DSN")

    def __init__(self, local_dir=None, pg_port=None, amqp_port=None):
        self.vars = {}
        if local_dir is not None:
            self.vars = {"SLUICE_LOCAL_DIR": str(local_dir), "SLUICE_PG_PORT": str(pg_port),
                         "SLUICE_AMQP_PORT": str(amqp_port)}
        if not self.vars and all(os.environ.get(k) for k in self.KEYS):
            self.env = {k: os.environ[k] for k in self.KEYS}
        else:
            self.env = {k: v for k, v in self._exports().items() if k in self.KEYS}

    def run(self, *args, timeout=300):
        """tools/servers.sh ARGS for this pair; returns its stdout, raises
        TestFailure with its stderr if it fails."""
        env = {**os.environ, **self.vars}
        if self.vars:  # ports derived from ours, not the shared pair's
            env.pop("SLUICE_DIST_PORT", None)
            env.pop("SLUICE_EPMD_PORT", None)
        r = subprocess.run([str(SERVERS), *args], env=env, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise TestFailure(f"tools/servers.sh {' '.join(args)} exited {r.returncode}: "
                              f"{r.stderr.strip()[-500:]}")
        return r.stdout

    def rabbitmqctl(self, *args):
        return self.run("rabbitmqctl", *args, timeout=60)

    def _exports(self):
        env = {}
        for line in self.run("env").splitlines():
            words = shlex.split(line)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                k, v = words[1].split("=", 1)
                env[k] = v
        return env


SHARED = Servers()
ENV = SHARED.env  # the shared pair's addresses



def md5(b):
    return hashlib.md5(b).hexdigest()


def det_bytes(seed, n):
    """n deterministic pseudo-random bytes derived from seed (any str)."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        out += block
        block = hashlib.sha256(block).digest()
    return bytes(out[:n])


def simple_body(tag, i):
    """The body of message i of a simple numbered set: 20..300 bytes,
    unique per (tag, i), includes arbitrary bytes (NULs too)."""
    head = f"{tag}:{i}:".encode()
    return head + det_bytes(f"{tag}/{i}", 20 + (i * 37) % 280)


def json_of_header(v):
    """What sluice's headers column should hold for a pika header value."""
    if isinstance(v, dict):
        return {k: json_of_header(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_of_header(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return base64.b64encode(v).decode()
    if isinstance(v, datetime.datetime):
        return v.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return v


def canon(v):
    """Canonical JSON text: compares true != 1 and key order away."""
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


class Msg:
    """One message to publish: body, pika properties (None = no properties
    at all), exchange and routing key (None = the queue's name)."""

    __slots__ = ("body", "props", "exchange", "routing_key")

    def __init__(self, body, props=None, exchange="", routing_key=None):
        self.body, self.props = body, props
        self.exchange, self.routing_key = exchange, routing_key


def amqp_connect(url=None):
    params = pika.URLParameters(url or ENV["RABBITMQ_URL"])
    params.heartbeat = 0  # we may sit idle in sluice.wait() for minutes
    params.blocked_connection_timeout = 60
    return pika.BlockingConnection(params)


def _publish_worker(url, queue, make, indices):
    conn = amqp_connect(url)
    ch = conn.channel()
    for i in indices:
        m = make(i)
        ch.basic_publish(m.exchange, queue if m.routing_key is None else m.routing_key,
                         m.body, m.props)
    conn.close()


class _Link:
    """One proxied connection: socks = [client, upstream]; out[i] holds the
    bytes still to write to socks[i]; eof[i]: socks[i] sent FIN; shut[i]: we
    shut down writing on socks[i] (passing on its peer's FIN); mask[i]: the
    selector events socks[i] is registered for."""

    def __init__(self, client, upstream):
        self.socks = [client, upstream]
        self.out = [bytearray(), bytearray()]
        self.eof = [False, False]
        self.shut = [False, False]
        self.mask = [0, 0]


class Proxy:
    """A TCP proxy a test owns: 127.0.0.1:<port> -> target (host, port). One
    thread runs every socket through a selector, so each control below takes
    effect at once, on every connection:
      pause() / resume()  stop / resume reading and writing; the sockets stay
                          open (both peers hear silence)
      cut()               reset every current connection (RST to both peers);
                          new connections are proxied as before
      down() / up()       close the listening socket (connects are refused) /
                          listen again on the same port
    A connection whose target refuses it is reset; a reset or FIN on one side
    is passed on to the other."""

    CHUNK = 65536
    HIGH_WATER = 1 << 20  # stop reading a side while this much waits for its peer

    def __init__(self, target):
        self.target = target
        self.port = 0
        self.paused = False
        self._links = []
        self._lsock = None
        self._closed = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._calls = SimpleQueue()
        self._listen()
        self._thread = threading.Thread(target=self._loop, name=f"proxy-{self.port}",
                                        daemon=True)
        self._thread.start()

    # ---- controls (any thread; run on the proxy's thread) -----------------

    def pause(self):
        self._call(lambda: setattr(self, "paused", True))

    def resume(self):
        self._call(lambda: setattr(self, "paused", False))

    def cut(self):
        """Reset every connection; returns how many there were."""
        def reset_all():
            links = list(self._links)
            for link in links:
                self._drop(link, reset=True)
            return len(links)
        return self._call(reset_all)

    def down(self):
        def unlisten():
            self._sel.unregister(self._lsock)
            self._lsock.close()
            self._lsock = None
        self._call(unlisten)

    def up(self):
        self._call(self._listen)

    def connections(self):
        return self._call(lambda: len(self._links))

    def upstream_ports(self):
        return self._call(lambda: [l.socks[1].getsockname()[1] for l in self._links])

    def close(self):
        if self._thread.is_alive():
            self._call(lambda: setattr(self, "_closed", True))
            self._thread.join(10)

    # ---- the proxy's thread -----------------------------------------------

    def _call(self, fn):
        """Run fn on the proxy's thread (between two selector waits); its result."""
        if not self._thread.is_alive():
            raise TestFailure(f"proxy on port {self.port}: its thread has ended")
        done, box = threading.Event(), {}

        def call():
            try:
                box["value"] = fn()
            except BaseException as e:  # handed to the caller
                box["error"] = e
            done.set()
        self._calls.put(call)
        self._wake_w.send(b"x")
        if not done.wait(30):
            raise TestFailure(f"proxy on port {self.port} did not answer")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def _listen(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        s.setblocking(False)
        self.port = s.getsockname()[1]
        self._lsock = s
        self._sel.register(s, selectors.EVENT_READ, "listen")

    def _loop(self):
        while not self._closed:
            for link in self._links:
                self._want(link)
            for key, events in self._sel.select(0.5):
                if key.data == "wake":
                    self._wake_r.recv(4096)
                    while not self._calls.empty():
                        self._calls.get()()
                elif key.data == "listen":
                    self._accept(key.fileobj)
                elif key.data[0] in self._links:  # not dropped earlier in this round
                    self._serve(*key.data, events)
        for link in list(self._links):
            self._drop(link, reset=False)
        if self._lsock:
            self._lsock.close()
        self._sel.close()

    def _accept(self, lsock):
        try:
            client, _ = lsock.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            _reset(client)
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
        self._links.append(_Link(client, upstream))

    def _want(self, link):
        """Register each socket for what it can do now."""
        for i in (0, 1):
            peer = 1 - i
            mask = 0
            if not self.paused:
                if not link.eof[i] and len(link.out[peer]) < self.HIGH_WATER:
                    mask |= selectors.EVENT_READ
                if link.out[i]:
                    mask |= selectors.EVENT_WRITE
            sock = link.socks[i]
            if mask and link.mask[i]:
                self._sel.modify(sock, mask, (link, i))
            elif mask:
                self._sel.register(sock, mask, (link, i))
            elif link.mask[i]:
                self._sel.unregister(sock)
            link.mask[i] = mask

    def _serve(self, link, i, events):
        sock, peer = link.socks[i], 1 - i
        try:
            if events & selectors.EVENT_READ:
                data = sock.recv(self.CHUNK)
                link.out[peer] += data
                link.eof[i] = not data
            if events & selectors.EVENT_WRITE:
                del link.out[i][:sock.send(link.out[i])]
            for j in (0, 1):  # pass a FIN on once what preceded it is written
                if link.eof[j] and not link.out[1 - j] and not link.shut[1 - j]:
                    link.socks[1 - j].shutdown(socket.SHUT_WR)
                    link.shut[1 - j] = True
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by one peer: reset the other
            self._drop(link, reset=True)
            return
        if all(link.shut):
            self._drop(link, reset=False)

    def _drop(self, link, reset):
        self._links.remove(link)
        for i, sock in enumerate(link.socks):
            if link.mask[i]:
                self._sel.unregister(sock)
            if reset:
                _reset(sock)
            else:
                sock.close()


def _reset(sock):
    """Close with SO_LINGER 0: the peer gets RST, not FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class RowReport:
    """compare_rows()'s answer: lists of keys (examples via sample())."""

    def __init__(self):
        self.missing, self.extra, self.wrong, self.dups = [], [], [], []

    def sample(self, what, label=None):
        """None if the list is empty, else 'N <label>, e.g. [...]'."""
        keys = getattr(self, what)
        return f"{len(keys)} {label or what}, e.g. {keys[:5]}" if keys else None

    def samples(self, *what):
        """sample() of each named list that is not empty, joined; None if all are."""
        return "; ".join(filter(None, map(self.sample, what))) or None


def compare_rows(rows, expected):
    """rows: (key, value) pairs as found; expected: {key: value}. Reports the
    expected keys not found (missing), keys not expected (extra), keys found
    with another value (wrong) and each copy of a key beyond its first (dups)."""
    r, seen = RowReport(), set()
    for key, value in rows:
        if key not in expected:
            r.extra.append(key)
            continue
        if key in seen:
            r.dups.append(key)
        seen.add(key)
        if value != expected[key]:
            r.wrong.append(key)
    r.missing = [k for k in expected if k not in seen]
    return r


class Sluice:
    """A sluice process; stdout+stderr go to build/test-logs/<test>.<label>.log."""

    def __init__(self, test, args, env, label):
        self.test, self.args, self.label = test, args, label
        self.log_path = LOGDIR / f"{test.name}.{label}.log"
        self._log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([str(SLUICE), *args], env=env, cwd=REPO,
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        print(f"  started sluice {label} (pid {self.pid}): {' '.join(args)}")

    def running(self):
        return self.proc.poll() is None

    def wait(self, timeout):
        """Exit status, or None if still running after timeout seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def expect_exit(self, timeout, what="sluice exits"):
        """Wait for the exit; fail (and kill it) if it does not come in time."""
        t0 = time.monotonic()
        rc = self.wait(timeout)
        if rc is None:
            self.kill()
            self.test.fail(f"{what}: still running after {timeout} s (killed)")
        print(f"  sluice {self.label} exited with {rc} after {time.monotonic() - t0:.1f} s")
        backend = {"epoll": "epoll", "uring": "io_uring"}.get(os.environ.get("SLUICE_IO", ""))
        if backend and "consuming queue" in self.log():  # a shard's loop ran
            self.test.check(f"I/O backend: {backend}" in self.log(),
                            f"sluice {self.label} ran on {backend} (SLUICE_IO)")
        return rc

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        if self.running():
            self.proc.kill()
            self.proc.wait()

    def log(self):
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def lines(self, level=None):
        """Log lines, optionally only those of one level (error, warn, ...)."""
        lines = self.log().splitlines()
        if level:
            lines = [l for l in lines if f" {level} [" in l]
        return lines

    def close(self):
        self.kill()
        self._log.close()


class Test:
    def __init__(self, name):
        self.name = name
        self.short = name[5:] if name.startswith("test_") else name
        self.suffix = secrets.token_hex(4)
        self.queues, self.exchanges, self.tables, self.procs = [], [], [], []
        self.servers = SHARED
        self._amqp = self._ch = self._pg = None
        self._cleanups = []
        self.checks = 0
        self.failed_sections = []
        LOGDIR.mkdir(parents=True, exist_ok=True)

    # ---- running a test ---------------------------------------------------

    @classmethod
    def main(cls, fn):
        """Run fn(test) as the whole script and exit 0, 1 or 77."""
        name = Path(sys.argv[0]).stem
        t = cls(name)

        def on_term(sig, frame):  # the runner's timeout: clean up, then go
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise TestAborted(f"terminated by signal {sig} (test timeout?)")

        signal.signal(signal.SIGTERM, on_term)
        rc, t0 = 0, time.monotonic()
        print(f"{name}: run id {t.suffix}")
        try:
            if not SLUICE.exists():
                raise TestSkip(f"{SLUICE} is not built (run make)")
            fn(t)
            if t.failed_sections:
                raise TestFailure("; ".join(t.failed_sections))
            print(f"{name}: PASS ({t.checks} checks, {time.monotonic() - t0:.1f} s)")
        except TestSkip as e:
            print(f"{name}: SKIP: {e}")
            rc = SKIP
        except (TestFailure, TestAborted) as e:
            t.show_logs()
            print(f"{name}: FAIL: {e}")
            rc = 1
        except Exception:
            traceback.print_exc()
            t.show_logs()
            print(f"{name}: FAIL: unexpected exception")
            rc = 1
        finally:
            try:
                t.cleanup()
            except Exception as e:  # cleanup problems do not hide the verdict
                print(f"{name}: warning: cleanup failed: {e!r}")
        sys.stdout.flush()
        os._exit(rc)

    def show_logs(self):
        for s in self.procs[-3:]:
            print(f"---- last lines of {s.log_path} ----")
            for line in s.log().splitlines()[-20:]:
                print(f"    {line}")

    def cleanup(self):
        try:
            for s in self.procs:
                s.close()
            for q in self.queues:
                self.channel().queue_delete(q)
            for x in self.exchanges:
                self.channel().exchange_delete(x)
            for table in self.tables:
                self.sql(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            self.reset_connections()
        finally:
            for fn in reversed(self._cleanups):
                try:
                    fn()
                except Exception as e:  # the next steps still run
                    print(f"{self.name}: warning: cleanup step failed: {e!r}")

    def on_cleanup(self, fn):
        """Run fn() when the test ends, pass or fail, after its sluice processes,
        queues and tables are gone; the last registered runs first."""
        self._cleanups.append(fn)

    def use_servers(self, servers):
        """Work on another server pair (a Servers) from now on; call it before
        creating queues or tables."""
        self.reset_connections()
        self.servers = servers

    def reset_connections(self):
        """Drop the cached AMQP and PostgreSQL connections (e.g. after their
        server restarted); the next use connects again."""
        for conn in (self._amqp, self._pg):
            with contextlib.suppress(Exception):
                if conn is not None:
                    conn.close()
        self._amqp = self._ch = self._pg = None

    # ---- checks -----------------------------------------------------------

    def fail(self, msg):
        raise TestFailure(msg)

    @contextlib.contextmanager
    def section(self, name):
        """Independent part of a test: a failure inside is recorded and the
        test goes on with the next section; the test fails at the end."""
        print(f"-- {name}")
        try:
            yield
        except TestFailure as e:
            print(f"  FAIL {name}: {e}")
            self.failed_sections.append(f"[{name}] {e}")

    def skip(self, msg):
        raise TestSkip(msg)

    def check(self, cond, what, observed=None):
        """Assert cond; `what` says what must hold, `observed` what we saw."""
        self.checks += 1
        if not cond:
            self.fail(what + (f" (observed: {observed})" if observed is not None else ""))
        shown = observed is not None and observed != [] and observed != ""
        print(f"  ok   {what}" + (f" [{observed}]" if shown else ""))

    def expect(self, cond, what, observed=None):
        """check() that records a failure and goes on; the test fails at the end."""
        try:
            self.check(cond, what, observed)
        except TestFailure as e:
            print(f"  FAIL {e}")
            self.failed_sections.append(str(e))
        return cond

    def eq(self, got, want, what):
        self.checks += 1
        if got != want:
            self.fail(f"{what}: expected {want!r}, got {got!r}")
        print(f"  ok   {what} == {want!r}")

    def check_no_secret(self, text, secret, what):
        self.check(secret not in text, f"{what}: output does not contain the password")

    # ---- names ------------------------------------------------------------

    def unique(self, what):
        """it_<test>_<what>_<random>: lower case, valid unquoted in SQL."""
        return f"it_{self.short}_{what}_{self.suffix}"[:63]

    # ---- RabbitMQ ---------------------------------------------------------

    def channel(self):
        if self._ch is None or self._ch.is_closed:
            if self._amqp is None or self._amqp.is_closed:
                self._amqp = amqp_connect(self.servers.env["RABBITMQ_URL"])
            self._ch = self._amqp.channel()
        return self._ch

    def queue(self, what="q", arguments=None):
        """Declare a fresh durable queue (deleted at the end), with optional
        x-arguments; returns its name."""
        name = self.unique(what)
        self.channel().queue_declare(name, durable=True, arguments=arguments)
        self.channel().queue_purge(name)
        self.queues.append(name)
        self.tables.append(name)  # sluice's default table name
        return name

    def exchange(self, what, queue, keys, kind="direct", durable=False):
        name = self.unique(what)
        ch = self.channel()
        ch.exchange_declare(name, kind, durable=durable, auto_delete=False)
        self.exchanges.append(name)
        for k in keys:
            ch.queue_bind(queue, name, routing_key=k)
        return name

    def publish(self, queue, msgs, expect_ready=None, timeout=60, wait=True):
        """Publish Msgs (no confirms), then (wait=True) wait until the queue
        holds expect_ready messages (default: as many as were published)."""
        ch, n = self.channel(), 0
        for m in msgs:
            ch.basic_publish(m.exchange, queue if m.routing_key is None else m.routing_key,
                             m.body, m.props)
            n += 1
        if wait:
            self.wait_ready(queue, n if expect_ready is None else expect_ready, timeout)
        return n

    def publish_parallel(self, queue, make, n, procs=2, timeout=120):
        """Publish make(i) for i in range(n) from `procs` forked processes,
        then wait until the queue holds n messages."""
        t0 = time.monotonic()
        ctx = multiprocessing.get_context("fork")
        url = self.servers.env["RABBITMQ_URL"]
        workers = [ctx.Process(target=_publish_worker,
                               args=(url, queue, make, range(k, n, procs)))
                   for k in range(procs)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout)
            if w.exitcode != 0:
                self.fail(f"publisher process exited with {w.exitcode}")
        self.wait_ready(queue, n, timeout)
        print(f"  published {n} messages to {queue} in {time.monotonic() - t0:.1f} s")

    def ready(self, queue):
        """Messages ready in the queue (passive queue.declare)."""
        return self.channel().queue_declare(queue, passive=True).method.message_count

    def wait_ready(self, queue, n, timeout=60):
        deadline = time.monotonic() + timeout
        while (got := self.ready(queue)) != n:
            if time.monotonic() > deadline:
                self.fail(f"queue {queue}: expected {n} ready messages, broker reports {got}")
            time.sleep(0.05)

    def broker_queue(self, queue):
        """{ready, unacked, consumers} from rabbitmqctl list_queues."""
        out = self.servers.rabbitmqctl("-q", "list_queues", "--no-table-headers", "name",
                                       "messages_ready", "messages_unacknowledged", "consumers")
        for line in out.splitlines():
            f = line.split("\t")
            if len(f) == 4 and f[0] == queue:
                return {"ready": int(f[1]), "unacked": int(f[2]), "consumers": int(f[3])}
        self.fail(f"rabbitmqctl list_queues does not show queue {queue}")

    def wait_broker(self, queue, timeout=15, **want):
        """Poll rabbitmqctl until the queue's counts equal `want`
        (e.g. ready=0, unacked=0); fail with the last counts otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.broker_queue(queue)
            if all(got[k] == v for k, v in want.items()):
                return got
            if time.monotonic() > deadline:
                return got
            time.sleep(0.3)

    def check_queue_drained(self, queue):
        """The queue ends with nothing ready and nothing unacked."""
        got = self.wait_broker(queue, ready=0, unacked=0)
        self.check(got["ready"] == 0 and got["unacked"] == 0,
                   f"queue {queue} has 0 ready and 0 unacked messages",
                   f"ready {got['ready']}, unacked {got['unacked']}")
        self.eq(self.ready(queue), 0, f"passive declare of {queue}: ready")

    # ---- PostgreSQL -------------------------------------------------------

    def pg(self):
        if self._pg is None or self._pg.closed:
            self._pg = psycopg.connect(self.servers.env["POSTGRES_DSN"], autocommit=True)
        return self._pg

    def sql(self, query, *params):
        with self.pg().cursor() as cur:
            cur.execute(query, params or None)
            return cur.fetchall() if cur.description else None

    def scalar(self, query, *params):
        return self.sql(query, *params)[0][0]

    def table(self, name):
        """Register a table to drop at the end; returns the name."""
        if name not in self.tables:
            self.tables.append(name)
        return name

    def table_exists(self, name):
        return self.scalar("SELECT to_regclass(%s) IS NOT NULL",
                           sql.Identifier(name).as_string(self.pg()))

    def count(self, table):
        if not self.table_exists(table):
            return 0
        return self.scalar(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))

    def column_types(self, table):
        rows = self.sql("SELECT a.attname, format_type(a.atttypid, a.atttypmod)"
                        "  FROM pg_attribute a WHERE a.attrelid = to_regclass(%s)"
                        "   AND a.attnum > 0 AND NOT a.attisdropped",
                        sql.Identifier(table).as_string(self.pg()))
        return dict(rows)

    @contextlib.contextmanager
    def locked(self, table, mode="SHARE"):
        """Hold a lock on table (as superuser) for the with-block. SHARE:
        sluice's COPYs into it wait, reads and catalog queries do not;
        ACCESS EXCLUSIVE: everything touching the table waits."""
        conn = psycopg.connect(self.servers.env["SLUICE_PG_ADMIN_DSN"])
        try:
            conn.execute("SET lock_timeout = '20s'")
            conn.execute(sql.SQL("LOCK TABLE {} IN {} MODE").format(sql.Identifier(table),
                                                                   sql.SQL(mode)))
            print(f"  locked table {table} ({mode})")
            yield conn
        finally:
            conn.rollback()
            conn.close()
            print(f"  released the lock on {table}")

    def copies_waiting(self, table):
        """sluice sessions whose COPY into table waits for a lock."""
        return self.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sluice'"
            " AND wait_event_type = 'Lock' AND query ILIKE %s", f"%copy%{table}%")

    def create_envelope_table(self, name, body_type="bytea"):
        """The table sluice would create (for tests that need it first)."""
        self.table(name)
        self.sql(sql.SQL(
            "CREATE TABLE {} (exchange text, routing_key text, message_id text,"
            " content_type text, headers jsonb, published_at timestamptz,"
            " ingested_at timestamptz NOT NULL DEFAULT now(), body {})").format(
                sql.Identifier(name), sql.SQL(body_type)))

    def check_ids_md5(self, table, expected, exactly_once=True):
        """expected: {message_id: md5 of body}. Each id must be in the table
        exactly once (or, exactly_once=False, at least once) with that body,
        and nothing else may be there. Returns the number of duplicate rows."""
        rows = self.sql(sql.SQL("SELECT message_id, md5(body) FROM {}").format(
            sql.Identifier(table)))
        r = compare_rows(rows, expected)
        self.check(not r.missing, f"{table}: all {len(expected)} messages arrived",
                   r.sample("missing"))
        self.check(not r.extra, f"{table}: no unexpected rows", r.sample("extra", "unexpected"))
        self.check(not r.wrong, f"{table}: every body is byte-identical (md5)",
                   r.sample("wrong", "differ"))
        if exactly_once:
            self.check(not r.dups, f"{table}: no message is stored twice",
                       r.sample("dups", "duplicate rows"))
            self.eq(len(rows), len(expected), f"{table}: row count")
        return len(r.dups)

    # ---- sluice -----------------------------------------------------------

    def sluice_env(self, extra=None):
        # SLUICE_IO passes through: tests/run.sh runs the suite on each backend.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SLUICE_") or k == "SLUICE_IO"}
        env["RABBITMQ_URL"] = self.servers.env["RABBITMQ_URL"]
        env["POSTGRES_DSN"] = self.servers.env["POSTGRES_DSN"]
        for k, v in (extra or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def sluice(self, *args, env=None, label=None, stats=True):
        """Start sluice with args (plus --stats-interval 0 unless stats=False);
        env entries override (None removes) the default environment."""
        args = list(args)
        if stats:
            args += ["--stats-interval", "0"]
        label = label or f"sluice-{len(self.procs) + 1}"
        s = Sluice(self, args, self.sluice_env(env), label)
        self.procs.append(s)
        return s

    def run_sluice(self, *args, env=None, timeout=30, stats=False):
        """Run sluice to completion; returns (exit status, output)."""
        s = self.sluice(*args, env=env, stats=stats)
        rc = s.expect_exit(timeout)
        return rc, s.log()

    def wait_until(self, cond, timeout, what, interval=0.05):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                self.fail(f"timed out after {timeout} s waiting for {what}")
            time.sleep(interval)
