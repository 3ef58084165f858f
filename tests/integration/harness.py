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
and what was observed, and the test exits 1. sluice's output goes to
build/test-logs/<test>.sluice-N.log; the last lines are shown on failure.
"""

import base64
import contextlib
import datetime
import hashlib
import json
import multiprocessing
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

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


def server_env():
    """RABBITMQ_URL, POSTGRES_DSN, SLUICE_PG_ADMIN_DSN: from the environment
    (tests/run.sh exports them) or else from `tools/servers.sh env`."""
    keys = ("RABBITMQ_URL", "POSTGRES_DSN", "SLUICE_PG_ADMIN_DSN")
    if all(os.environ.get(k) for k in keys):
        return {k: os.environ[k] for k in keys}
    out = subprocess.run([str(SERVERS), "env"], check=True, capture_output=True,
                         text=True).stdout
    env = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            k, v = words[1].split("=", 1)
            env[k] = v
    return {k: env[k] for k in keys}


ENV = server_env()


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


def amqp_connect():
    params = pika.URLParameters(ENV["RABBITMQ_URL"])
    params.heartbeat = 0  # we may sit idle in sluice.wait() for minutes
    params.blocked_connection_timeout = 60
    return pika.BlockingConnection(params)


def _publish_worker(queue, make, indices):
    conn = amqp_connect()
    ch = conn.channel()
    for i in indices:
        m = make(i)
        ch.basic_publish(m.exchange, queue if m.routing_key is None else m.routing_key,
                         m.body, m.props)
    conn.close()


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
        self._amqp = self._ch = self._pg = None
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
        for s in self.procs:
            s.close()
        ch = self.channel()
        for q in self.queues:
            ch.queue_delete(q)
        for x in self.exchanges:
            ch.exchange_delete(x)
        for table in self.tables:
            self.sql(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        if self._amqp:
            self._amqp.close()
        if self._pg:
            self._pg.close()

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
                self._amqp = amqp_connect()
            self._ch = self._amqp.channel()
        return self._ch

    def queue(self, what="q"):
        """Declare a fresh durable queue (deleted at the end); returns its name."""
        name = self.unique(what)
        self.channel().queue_declare(name, durable=True)
        self.channel().queue_purge(name)
        self.queues.append(name)
        self.tables.append(name)  # sluice's default table name
        return name

    def exchange(self, what, queue, keys, kind="direct"):
        name = self.unique(what)
        ch = self.channel()
        ch.exchange_declare(name, kind, durable=False, auto_delete=False)
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
        workers = [ctx.Process(target=_publish_worker, args=(queue, make, range(k, n, procs)))
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
        out = subprocess.run(
            [str(SERVERS), "rabbitmqctl", "-q", "list_queues", "--no-table-headers",
             "name", "messages_ready", "messages_unacknowledged", "consumers"],
            check=True, capture_output=True, text=True, timeout=60).stdout
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
            self._pg = psycopg.connect(ENV["POSTGRES_DSN"], autocommit=True)
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
    def locked(self, table):
        """Hold a SHARE lock on table (as superuser) for the with-block:
        sluice's COPYs into it wait; reads and catalog queries do not."""
        conn = psycopg.connect(ENV["SLUICE_PG_ADMIN_DSN"])
        try:
            conn.execute("SET lock_timeout = '20s'")
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(table)))
            print(f"  locked table {table}")
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
        seen, dups, wrong, extra = {}, [], [], []
        for mid, digest in rows:
            if mid not in expected:
                extra.append(mid)
                continue
            if mid in seen:
                dups.append(mid)
            seen[mid] = seen.get(mid, 0) + 1
            if digest != expected[mid]:
                wrong.append(mid)
        missing = [m for m in expected if m not in seen]
        self.check(not missing, f"{table}: all {len(expected)} messages arrived",
                   f"{len(missing)} missing, e.g. {missing[:5]}" if missing else None)
        self.check(not extra, f"{table}: no unexpected rows",
                   f"{len(extra)} unexpected, e.g. {extra[:5]}" if extra else None)
        self.check(not wrong, f"{table}: every body is byte-identical (md5)",
                   f"{len(wrong)} differ, e.g. {wrong[:5]}" if wrong else None)
        if exactly_once:
            self.check(not dups, f"{table}: no message is stored twice",
                       f"{len(dups)} duplicate rows, e.g. {dups[:5]}" if dups else None)
            self.eq(len(rows), len(expected), f"{table}: row count")
        return len(dups)

    # ---- sluice -----------------------------------------------------------

    def sluice_env(self, extra=None):
        # SLUICE_IO passes through: tests/run.sh runs the suite on each backend.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SLUICE_") or k == "SLUICE_IO"}
        env["RABBITMQ_URL"] = ENV["RABBITMQ_URL"]
        env["POSTGRES_DSN"] = ENV["POSTGRES_DSN"]
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
