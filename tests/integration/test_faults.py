"""Fault injection: sluice keeps every message through server crashes,
restarts, cut connections and poison messages.

The test runs its own RabbitMQ and PostgreSQL (tools/servers.sh with
SLUICE_LOCAL_DIR=.local/faults, ports 36672 and 36432) and a TCP proxy in
front of each, through which sluice connects. While a publisher sends
persistent messages with confirms (good JSON with unique message ids, and
poison of every kind below), it injects, at points drawn from a seeded RNG:

  rabbitmq-kill         SIGKILL the broker, start it again
  pg-restart-fast       pg_ctl restart -m fast
  pg-restart-immediate  pg_ctl restart -m immediate (crash recovery)
  pg-terminate          pg_terminate_backend() of sluice's sessions
  sluice-kill           SIGKILL sluice and start it again, sometimes with the
                        broker or the database unreachable for 1-3 s
                        (counted as startup-amqp-down / startup-pg-down)
  amqp-cut, pg-cut      reset every connection through that proxy
  pg-lock               hold LOCK TABLE ... IN ACCESS EXCLUSIVE MODE 2-5 s

After each fault sluice must still run (it is never restarted by the test
unless the fault killed it; an exit is a failure, and sluice is then
restarted so the accounting below still counts what was lost) and be back
on both servers with rows arriving. In the end the queue is drained, sluice
stops on SIGTERM, and every good message must be in the table (message_id,
body) and every poison message in the dead-letter table (body md5, message
id with bad bytes as U+FFFD, exchange, routing key, SQLSTATE); the queue
holds nothing ready or unacked; the broker's log shows no ack of an unknown
delivery tag. Two scenarios:

  dedupe     --dedupe-key message_id, jsonb body, sluice creates the table
             and the default dead-letter table: no duplicate row allowed
  no_dedupe  text body, the test creates the table, --dead-letter-table:
             duplicates are counted and reported, not failed
and, without faults, `reject`: --dead-letter reject sends the poison to the
queue's dead-letter exchange (x-death reason rejected), the rest are rows.

Poison, and the SQLSTATE its dead-letter row must carry: body not JSON into
jsonb 22P02; body not UTF-8 / with a NUL into text 22021; message_id with a
0xff byte / with a NUL 22021; routing key over varchar(64) 22001;
content_type refused by a CHECK 23514; no message_id under --dedupe-key
23502. New options go in as environment variables (SLUICE_DEDUPE_KEY,
SLUICE_DEAD_LETTER_TABLE, SLUICE_DEAD_LETTER).

Short form (make check, about 2 minutes): each fault kind once per scenario
in a random order, then random ones until the dedupe scenario has run 60 s.
Long form (make soak): SLUICE_SOAK_SECONDS of faults in all, split between
the two scenarios. Environment:
  SLUICE_FAULT_SEED       seed of the fault schedule and message mix (printed)
  SLUICE_FAULT_RATE       messages published per second (default 400)
  SLUICE_FAULT_POISON=0   no poison: transport faults only
  SLUICE_FAULT_PG_PORT, SLUICE_FAULT_AMQP_PORT   the private servers' ports
Ends with a summary (faults injected, messages found) to paste in a note."""

import collections
import json
import os
import random
import secrets
import signal
import threading
import time
import urllib.parse

import pika
import psycopg
from psycopg import sql

from harness import (REPO, Msg, Proxy, Servers, Test, TestFailure, amqp_connect, canon,
                     compare_rows, md5)

SHARDS = 2
PG_PORT = int(os.environ.get("SLUICE_FAULT_PG_PORT") or 36432)
AMQP_PORT = int(os.environ.get("SLUICE_FAULT_AMQP_PORT") or 36672)
SOAK_SECONDS = float(os.environ.get("SLUICE_SOAK_SECONDS") or 0)
RATE = float(os.environ.get("SLUICE_FAULT_RATE") or 400)
WITH_POISON = os.environ.get("SLUICE_FAULT_POISON") != "0"
POISON_SHARE = 0.04
GAP = (2.0, 10.0) if SOAK_SECONDS else (0.5, 2.5)  # seconds between faults
RECOVERY_TIMEOUT = 30  # a server back -> sluice on both with rows arriving (backoff cap 5 s)
DRAIN_TIMEOUT = 120
SHORT_SECONDS = 60  # the short form's dedupe scenario; no_dedupe: each kind once
REJECT_MESSAGES = 2000
MAX_EXITS = 10  # unexpected exits of sluice before a scenario gives up

FAULTS = ("rabbitmq-kill", "pg-restart-fast", "pg-restart-immediate", "pg-terminate",
          "sluice-kill", "amqp-cut", "pg-cut", "pg-lock")

POISON_SQLSTATE = {
    "bad-json": "22P02",
    "body-bad-utf8": "22021",
    "body-nul": "22021",
    "id-bad-utf8": "22021",
    "id-nul": "22021",
    "long-routing-key": "22001",
    "check": "23514",
    "no-id": "23502",
}
CHECK_REFUSES = "poison/check"

DEAD_LETTER_COLUMNS = {
    "queue": "text", "exchange": "text", "routing_key": "text", "message_id": "text",
    "content_type": "text", "headers": "jsonb", "published_at": "timestamp with time zone",
    "body": "bytea", "sqlstate": "text", "error": "text", "target_table": "text",
    "failed_at": "timestamp with time zone",
}


def with_port(url, port):
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(u._replace(netloc=f"{u.netloc.rsplit(':', 1)[0]}:{port}"))


def body_digest(body_type, body):
    """What identifies a body as stored: md5 of its bytes; for jsonb, of its
    canonical JSON (PostgreSQL normalises jsonb)."""
    if body is None:
        return None
    if isinstance(body, str):
        body = body.encode()
    if body_type == "jsonb":
        return md5(canon(json.loads(body)).encode())
    return md5(body)


def poison_kinds(body_type, dedupe):
    """The poison kinds that fail with this body type (and dedupe)."""
    if not WITH_POISON:
        return []
    only = {"bad-json": body_type == "jsonb", "body-bad-utf8": body_type == "text",
            "body-nul": body_type == "text", "no-id": dedupe}
    return [k for k in POISON_SQLSTATE if only.get(k, True)]


def refuse_poison(t, table):
    """The column type and CHECK that the long-routing-key and check poison
    run into."""
    t.sql(sql.SQL("ALTER TABLE {} ALTER COLUMN routing_key TYPE varchar(64),"
                  " ADD CHECK (content_type IS DISTINCT FROM {})").format(
                      sql.Identifier(table), sql.Literal(CHECK_REFUSES)))


def split_expectations(sent):
    """Messages.make() expectations -> ({message_id: body digest} of the good,
    {message_id: md5 of body} of the good, {md5 of body: dead letter} of the poison)."""
    rows = [e for e in sent if e[0] == "row"]
    return ({e[1]: e[2] for e in rows}, {e[1]: e[3] for e in rows},
            {e[1]: e[2] for e in sent if e[0] == "dead"})


def read_rows(t, table, body_type):
    """(message_id, body digest) of every row of table."""
    body = sql.SQL("body::text" if body_type == "jsonb" else "body")
    return [(mid, body_digest(body_type, b)) for mid, b in t.sql(
        sql.SQL("SELECT message_id, {} FROM {}").format(body, sql.Identifier(table)))]


class Messages:
    """Message i of a scenario: good JSON or, with probability `share`,
    poison of one of the scenario's kinds, drawn from rng (seeded: the mix
    repeats with the seed).
    make(i) returns (Msg, expectation); an expectation is
    ("row", message_id, body digest, md5 of body) or
    ("dead", md5 of body, (message_id, exchange, routing_key, SQLSTATE), kind)."""

    def __init__(self, run, queue, fanout, body_type, kinds, rng, share=POISON_SHARE):
        self.run, self.queue, self.fanout = run, queue, fanout
        self.body_type, self.kinds, self.rng, self.share = body_type, kinds, rng, share

    def make(self, i):
        kind = None
        if self.kinds and self.rng.random() < self.share:
            kind = self.rng.choice(self.kinds)
        mid = f"{self.run}-{i}"
        body = json.dumps({"run": self.run, "i": i, "text": "grüße " + "x" * (i % 40)},
                          ensure_ascii=False).encode()
        raw_id, stored_id = mid, mid  # as published / as a dead-letter row holds it
        exchange, key = "", self.queue
        content_type = "application/json"
        if kind == "bad-json":
            body = body[:-1] + b", oops"
        elif kind == "body-bad-utf8":
            body += b" \xff"
        elif kind == "body-nul":
            body += b" \x00"
        elif kind == "id-bad-utf8":
            raw_id, stored_id = mid.encode() + b"\xff", mid + "\ufffd"
        elif kind == "id-nul":
            raw_id, stored_id = mid.encode() + b"\x00z", mid + "\ufffdz"
        elif kind == "long-routing-key":
            exchange, key = self.fanout, f"{mid}.{'k' * 80}"
        elif kind == "check":
            content_type = CHECK_REFUSES
        elif kind == "no-id":
            raw_id = stored_id = None
        props = pika.BasicProperties(message_id=raw_id, content_type=content_type,
                                     delivery_mode=2, headers={"i": i})
        msg = Msg(body, props, exchange, key)
        if kind is None:
            return msg, ("row", mid, body_digest(self.body_type, body), md5(body))
        return msg, ("dead", md5(body), (stored_id, exchange, key, POISON_SQLSTATE[kind]), kind)


class Publisher(threading.Thread):
    """Publishes messages.make(0), make(1), ... at `rate` per second, with
    confirms, straight to the broker (not through a proxy), until stop().
    A publish that fails with the broker is repeated once it is back; the
    broker may have taken the first one too, so each of those (`retried`)
    may sit twice in the queue. `sent`: the expectations of the confirmed."""

    GIVE_UP = 120  # seconds without the broker

    def __init__(self, url, messages, rate):
        super().__init__(name="publisher", daemon=True)
        self.url, self.messages, self.rate = url, messages, rate
        self.sent, self.retried, self.error = [], 0, None
        self._stopping = threading.Event()
        self._conn = self._ch = None

    def stop(self):
        self._stopping.set()
        self.join()
        if self._conn:
            self._close()
        self.check()

    def check(self):
        if self.error:
            raise TestFailure(f"publisher: {self.error}")

    def run(self):
        t0 = time.monotonic()
        try:
            while not self._stopping.wait(t0 + len(self.sent) / self.rate - time.monotonic()):
                msg, expectation = self.messages.make(len(self.sent))
                self._publish(msg)
                self.sent.append(expectation)
        except Exception as e:  # the test reads it after stop()
            self.error = e

    def _publish(self, m):
        deadline, failed = time.monotonic() + self.GIVE_UP, False
        while True:
            try:
                if self._ch is None:
                    self._conn = amqp_connect(self.url)
                    self._ch = self._conn.channel()
                    self._ch.confirm_delivery()
                self._ch.basic_publish(m.exchange, m.routing_key, m.body, m.props,
                                       mandatory=True)
                self.retried += failed
                return
            except (pika.exceptions.AMQPError, OSError) as e:
                failed = failed or self._ch is not None
                self._close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"publishing failed for {self.GIVE_UP} s: {e!r}")
                time.sleep(0.2)

    def _close(self):
        try:
            self._conn.close()
        except Exception:
            pass
        self._conn = self._ch = None


class Rig:
    """This test's own servers and a proxy in front of each; amqp_url and
    pg_dsn lead through the proxies. Everything is stopped at the end."""

    DIR = REPO / ".local" / "faults"
    BROKER_LOG = DIR / "rabbitmq" / "log" / "sluice@localhost.log"

    def __init__(self, t):
        self.servers = Servers(self.DIR, PG_PORT, AMQP_PORT)
        t.on_cleanup(lambda: self.servers.run("stop"))
        t0 = time.monotonic()
        print(self.servers.run("start").rstrip())
        print(f"  own servers up in {time.monotonic() - t0:.1f} s")
        t.use_servers(self.servers)
        self.amqp_proxy = Proxy(("127.0.0.1", AMQP_PORT))
        t.on_cleanup(self.amqp_proxy.close)
        self.pg_proxy = Proxy(("127.0.0.1", PG_PORT))
        t.on_cleanup(self.pg_proxy.close)
        self.amqp_url = with_port(self.servers.env["RABBITMQ_URL"], self.amqp_proxy.port)
        self.pg_dsn = with_port(self.servers.env["POSTGRES_DSN"], self.pg_proxy.port)

    def broker_log_size(self):
        return self.BROKER_LOG.stat().st_size if self.BROKER_LOG.exists() else 0

    def broker_log_since(self, size, pattern):
        """Lines of the broker's log written after it had `size` bytes that
        contain pattern."""
        with open(self.BROKER_LOG, "rb") as f:
            f.seek(size if size <= self.broker_log_size() else 0)  # 0: rotated meanwhile
            return [l for l in f.read().decode(errors="replace").splitlines() if pattern in l]


class Runner:
    """The sluice under test. exited() notices an exit nobody asked for,
    returns its status and starts sluice again (so the run goes on and the
    accounting still says what was lost)."""

    def __init__(self, t, name, args, env):
        self.t, self.name, self.args, self.env = t, name, args, env
        self.proc, self.starts, self.exits = None, 0, []

    def start(self):
        self.starts += 1
        self.proc = self.t.sluice(*self.args, env=self.env, label=f"{self.name}-{self.starts}")

    def kill(self):
        self.proc.kill()

    def exited(self):
        rc = self.proc.proc.poll()
        if rc is not None:
            self.exits.append(rc)
            self.start()
        return rc


class Scenario:
    def __init__(self, t, rig, name, dedupe, body_type, seed, fault_seconds):
        self.t, self.rig, self.name = t, rig, name
        self.dedupe, self.body_type, self.fault_seconds = dedupe, body_type, fault_seconds
        self.seed = seed
        self.rng = random.Random(f"{seed}/faults/{name}")
        self.injected = collections.Counter()
        self.recovery = {}  # fault kind -> slowest recovery, seconds
        self.problems = []
        self.result = None  # the accounting, once done
        self.t0 = time.monotonic()
        self.broker_log_at = rig.broker_log_size()

    # ---- the run ----------------------------------------------------------

    def run(self):
        t = self.t
        self.prepare()
        messages = Messages(f"{self.name}-{t.suffix}", self.q, self.fanout, self.body_type,
                            poison_kinds(self.body_type, self.dedupe),
                            random.Random(f"{self.seed}/messages/{self.name}"))
        self.pub = pub = Publisher(self.rig.servers.env["RABBITMQ_URL"], messages, RATE)
        args = ["--queue", self.q, "--shards", str(SHARDS), "--body-type", self.body_type,
                "--batch-rows", "200", "--drain-timeout", "30"]
        env = {**self.options, "RABBITMQ_URL": self.rig.amqp_url,
               "POSTGRES_DSN": self.rig.pg_dsn}
        self.runner = Runner(t, self.name, args, env)
        pub.start()
        try:
            # Startup with a server down: the database in one scenario, the broker in the other.
            down = "pg" if self.dedupe else "amqp"
            self.inject(f"startup-{down}-down", lambda: self.start_sluice(down))
            for kind in self.plan():
                time.sleep(self.rng.uniform(*GAP))
                self.inject(kind, getattr(self, kind.replace("-", "_")))
            pub.stop()
            print(f"  published {len(pub.sent)} messages ({pub.retried} publishes repeated "
                  f"after a broker fault) in {time.monotonic() - self.t0:.0f} s")
            drained = self.drain()
            self.stop_sluice()
        finally:  # nothing of this scenario may run into the next
            if self.runner.proc:
                self.runner.proc.kill()
            pub.stop()
        self.elapsed = time.monotonic() - self.t0
        self.result = self.account(pub)
        self.verify(drained)

    def stop_sluice(self):
        s = self.runner.proc
        s.signal(signal.SIGTERM)
        rc = s.wait(60)
        if rc is None:
            s.kill()
        self.t.expect(rc == 0, "sluice exits 0 within 60 s of SIGTERM",
                      "still running, killed" if rc is None else f"exit {rc}")

    def plan(self):
        """Each kind once in a random order; then (long form) random kinds
        until the scenario's time is up."""
        kinds = list(FAULTS)
        self.rng.shuffle(kinds)
        yield from kinds
        while time.monotonic() - self.t0 < self.fault_seconds:
            yield self.rng.choice(FAULTS)

    def prepare(self):
        """Queue, a fanout exchange for routing keys too long for the table,
        the table with a CHECK and routing_key varchar(64)."""
        t = self.t
        self.q = self.table = t.queue(self.name)
        self.fanout = t.exchange(f"{self.name}_rk", self.q, [""], kind="fanout", durable=True)
        if self.dedupe:
            self.dead = t.table("sluice_dead_letters")  # the default name
            self.options = {"SLUICE_DEDUPE_KEY": "message_id"}
            rc, _ = t.run_sluice("--queue", self.q, "--until-empty", "--body-type",
                                 self.body_type, env=self.options, timeout=60)
            t.expect(rc == 0, "sluice --until-empty on the empty queue creates the table",
                     f"exit {rc}")
            self.check_dedupe_column()
        else:
            self.dead = t.table(t.unique("dead"))
            self.options = {"SLUICE_DEAD_LETTER_TABLE": self.dead}
        if not t.table_exists(self.table):
            t.create_envelope_table(self.table, self.body_type)
        refuse_poison(t, self.table)

    def check_dedupe_column(self):
        t = self.t
        got = t.column_types(self.table).get("dedupe_key")
        t.expect(got == "text", "sluice created column dedupe_key text", got)
        unique = t.scalar(
            "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(%s)"
            " AND i.indisunique AND i.indnatts = 1 AND a.attname = 'dedupe_key'",
            sql.Identifier(self.table).as_string(t.pg()))
        t.expect(unique == 1, "sluice created a unique index on dedupe_key", unique)

    # ---- faults -----------------------------------------------------------

    def inject(self, kind, fault):
        print(f"  [{time.monotonic() - self.t0:5.1f} s] {kind}", flush=True)
        detail = fault()
        if detail:
            print(f"      {detail}")
        self.pub.check()
        if kind in FAULTS:  # start_sluice() counts the startup-*-down variants
            self.injected[kind] += 1
        self.await_recovery(kind)

    def start_sluice(self, unreachable=None):
        """Start sluice; unreachable "amqp" or "pg": that proxy refuses
        connections for its first 1-3 s (startup with a server down)."""
        proxy = {"amqp": self.rig.amqp_proxy, "pg": self.rig.pg_proxy}.get(unreachable)
        if not proxy:
            self.runner.start()
            return None
        proxy.down()
        self.runner.start()
        down = self.rng.uniform(1, 3)
        time.sleep(down)
        proxy.up()
        self.injected[f"startup-{unreachable}-down"] += 1
        server = "broker" if unreachable == "amqp" else "database"
        return f"sluice started with the {server} unreachable for {down:.1f} s"

    def rabbitmq_kill(self):
        t0 = time.monotonic()
        self.rig.servers.run("kill-rabbitmq")
        time.sleep(self.rng.uniform(0, 2))
        self.rig.servers.run("start")
        self.t.reset_connections()
        return f"broker down for {time.monotonic() - t0:.1f} s"

    def pg_restart(self, mode):
        self.rig.servers.run("restart-postgres", mode)
        self.t.reset_connections()

    def pg_restart_fast(self):
        self.pg_restart("fast")

    def pg_restart_immediate(self):
        self.pg_restart("immediate")

    def pg_terminate(self):
        n = self.t.scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                          " WHERE application_name = 'sluice'")
        return f"{n} sluice sessions terminated"

    def sluice_kill(self):
        self.runner.kill()
        return self.start_sluice(self.rng.choice([None, "amqp", "pg"]))

    def amqp_cut(self):
        return f"{self.rig.amqp_proxy.cut()} connections reset"

    def pg_cut(self):
        return f"{self.rig.pg_proxy.cut()} connections reset"

    def pg_lock(self):
        with self.t.locked(self.table, "ACCESS EXCLUSIVE"):
            time.sleep(self.rng.uniform(2, 5))

    # ---- watching sluice --------------------------------------------------

    def problem(self, what):
        print(f"  !! {what}")
        self.problems.append(what)

    def noticed_exit(self, after):
        rc = self.runner.exited()
        if rc is None:
            return
        self.problem(f"sluice exited with status {rc} after {after} (it must reconnect by "
                     f"itself); started it again")
        if len(self.runner.exits) >= MAX_EXITS:
            self.t.fail(f"sluice exited {MAX_EXITS} times; this scenario gives up")

    def await_recovery(self, kind):
        """sluice runs, every shard is on the queue and has a PostgreSQL
        session, and rows (or dead letters) keep arriving."""
        t0 = time.monotonic()
        before = self.stored()
        while True:
            self.noticed_exit(kind)
            now = self.stored()
            if before is None:
                before = now
            elif now is not None and now > before and self.connected():
                took = time.monotonic() - t0
                self.recovery[kind] = max(self.recovery.get(kind, 0), took)
                print(f"      back in {took:.1f} s")
                return
            if time.monotonic() - t0 > RECOVERY_TIMEOUT:
                self.problem(f"{RECOVERY_TIMEOUT} s after {kind}: sluice is not back on both "
                             f"servers with rows arriving")
                return
            time.sleep(0.2)

    def stored(self):
        """Rows plus dead letters, or None while PostgreSQL does not answer."""
        try:
            return self.t.count(self.table) + self.t.count(self.dead)
        except psycopg.Error:
            self.t.reset_connections()
            return None

    def connected(self):
        try:
            ch = self.t.channel()
            consumers = ch.queue_declare(self.q, passive=True).method.consumer_count
            sessions = self.t.scalar("SELECT count(*) FROM pg_stat_activity"
                                     " WHERE application_name = 'sluice'")
        except (pika.exceptions.AMQPError, psycopg.Error, OSError):
            self.t.reset_connections()
            return False
        return consumers >= SHARDS and sessions >= SHARDS

    def drain(self):
        """Wait until the broker holds nothing of the queue, ready or unacked."""
        t0, got = time.monotonic(), None
        while time.monotonic() - t0 < DRAIN_TIMEOUT:
            self.noticed_exit("the last fault (while draining)")
            if self.t.ready(self.q) == 0:
                got = self.t.broker_queue(self.q)
                if got["ready"] == 0 and got["unacked"] == 0:
                    print(f"  queue drained {time.monotonic() - t0:.1f} s after the last publish")
                    return True
            time.sleep(0.5)
        self.problem(f"queue not drained {DRAIN_TIMEOUT} s after the last publish: {got}")
        return False

    # ---- the accounting ---------------------------------------------------

    def account(self, pub):
        t = self.t
        good, good_md5, poison = split_expectations(pub.sent)
        rows = read_rows(t, self.table, self.body_type)
        types = t.column_types(self.dead)
        wrong_types = {c: types.get(c) for c, ty in DEAD_LETTER_COLUMNS.items()
                       if types.get(c) != ty}
        dead, unexplained = [], []
        if types.keys() >= {"queue", "body", "message_id", "exchange", "routing_key", "sqlstate",
                            "error", "target_table"}:
            for m, *v, error, target in t.sql(sql.SQL(
                    "SELECT md5(body), message_id, exchange, routing_key, sqlstate, error,"
                    " target_table FROM {} WHERE queue = %s").format(
                        sql.Identifier(self.dead)), self.q):
                dead.append((m, tuple(v)))
                if not error or target.rsplit(".", 1)[-1].strip('"') != self.table:
                    unexplained.append((m, error, target))
        found_ids = {mid for mid, _ in rows}
        found_md5 = {m for m, _ in dead}
        lost = [m for m, h in good_md5.items() if m not in found_ids and h not in found_md5]
        lost += [m for m, v in poison.items() if m not in found_md5 and v[0] not in found_ids]
        return {
            "good": good, "poison": poison, "rows": rows, "dead": dead,
            "row_report": compare_rows(rows, good), "dead_report": compare_rows(dead, poison),
            "dead_types": wrong_types, "unexplained": unexplained, "lost": lost,
            "retried": pub.retried,
            "poison_kinds": collections.Counter(e[3] for e in pub.sent if e[0] == "dead"),
        }

    def verify(self, drained):
        t, r = self.t, self.result
        rows, dead = r["row_report"], r["dead_report"]
        t.expect(not self.problems, "sluice kept running and came back after every fault",
                 f"{len(self.problems)} problems: {self.problems[:4]}" if self.problems else None)
        t.expect(drained, "the queue drained while sluice ran")
        got = t.wait_broker(self.q, ready=0, unacked=0)
        t.expect(got["ready"] == 0 and got["unacked"] == 0,
                 f"queue {self.q}: nothing ready or unacked at the end", got)
        stale = self.rig.broker_log_since(self.broker_log_at, "unknown delivery tag")
        t.expect(not stale, "the broker saw no ack of an unknown delivery tag (tags of a "
                 "dead channel are never acked)", stale[:2] or None)
        t.expect(not r["lost"], "no message lost (each is a row or a dead letter)",
                 f"{len(r['lost'])} lost, e.g. {r['lost'][:5]}" if r["lost"] else None)
        t.expect(not rows.missing, f"all {len(r['good'])} good messages are rows",
                 rows.sample("missing"))
        t.expect(not rows.wrong, "every row's body is the one published", rows.sample("wrong"))
        t.expect(not rows.extra, "no other rows (poison is never a row)",
                 rows.sample("extra", "unexpected"))
        if self.dedupe:
            t.expect(not rows.dups, "no duplicate rows (--dedupe-key message_id)",
                     rows.sample("dups", "duplicate rows"))
        else:
            print(f"  info {len(rows.dups)} duplicate rows (no dedupe: counted, not a failure;"
                  f" publishes repeated: {r['retried']})")
        t.expect(not r["dead_types"], f"dead-letter table {self.dead} has the documented columns",
                 r["dead_types"] or None)
        t.expect(not dead.missing, f"all {len(r['poison'])} poison messages are dead letters",
                 dead.sample("missing"))
        found = dict(r["dead"])
        t.expect(not dead.wrong, "each dead letter's message_id, exchange, routing key and "
                 "SQLSTATE are as expected", [(r["poison"][k], found[k]) for k in dead.wrong[:3]]
                 if dead.wrong else None)
        t.expect(not dead.extra, "no other dead letters (good messages are never one)",
                 dead.sample("extra", "unexpected"))
        t.expect(not r["unexplained"], "each dead letter has an error message and names "
                 f"the table {self.table}", r["unexplained"][:3] or None)
        print(f"  info {len(dead.dups)} duplicate dead letters (counted, not a failure)")

    def summary(self):
        """One row of the closing table."""
        r = self.result
        if r is None:
            return f"| {self.name} | (did not finish) |"
        pub = len(r["good"]) + len(r["poison"])
        return (f"| {self.name} | {pub} ({len(r['good'])} + {len(r['poison'])}) | "
                f"{len(r['rows'])} | {len(r['dead'])} | {len(r['lost'])} | "
                f"{len(r['row_report'].dups)} | {len(r['dead_report'].dups)} | "
                f"{len(self.runner.exits)} | {r['retried']} | "
                f"{self.elapsed:.0f} s |")


def print_summary(seed, scenarios):
    form = f"long form, SLUICE_SOAK_SECONDS={SOAK_SECONDS:g}" if SOAK_SECONDS else "short form"
    print(f"\n== fault injection summary ({form}; seed {seed}: SLUICE_FAULT_SEED={seed} "
          f"repeats the schedule and the message mix)")
    print("\nInjected (count per scenario; slowest time until sluice was back):\n")
    print("| fault | " + " | ".join(s.name for s in scenarios) + " | slowest recovery |")
    print("|---" * (len(scenarios) + 2) + "|")
    kinds = sorted(set().union(*(s.injected for s in scenarios)))
    for k in kinds:
        slowest = max((s.recovery.get(k, 0) for s in scenarios), default=0)
        print(f"| {k} | " + " | ".join(str(s.injected[k]) for s in scenarios) +
              f" | {slowest:.1f} s |")
    print("\nFound (published = good + poison; duplicates and unexpected exits of sluice):\n")
    print("| scenario | published | good rows | dead letters | lost | duplicate rows |"
          " duplicate dead letters | sluice exits | publisher repeats | time |")
    print("|---" * 10 + "|")
    for s in scenarios:
        print(s.summary())
    for s in scenarios:
        if s.result:
            mix = ", ".join(f"{k} {n}" for k, n in sorted(s.result["poison_kinds"].items()))
            print(f"\npoison in {s.name}: {mix or 'none'}")


def reject_mode(t, seed):
    """--dead-letter reject, no faults: every poison message goes to the
    queue's dead-letter exchange by basic.reject (x-death reason
    "rejected"), every good one is a row, once; no dead-letter rows."""
    rejected = t.queue("rejected")
    dlx = t.exchange("dlx", rejected, [""], kind="fanout", durable=True)
    q = t.queue("reject", arguments={"x-dead-letter-exchange": dlx})
    fanout = t.exchange("reject_rk", q, [""], kind="fanout", durable=True)
    t.create_envelope_table(q, "jsonb")
    refuse_poison(t, q)
    messages = Messages(f"reject-{t.suffix}", q, fanout, "jsonb", poison_kinds("jsonb", False),
                        random.Random(f"{seed}/messages/reject"), share=0.1)
    made = [messages.make(i) for i in range(REJECT_MESSAGES)]
    t.publish(q, [m for m, _ in made])
    rc, _ = t.run_sluice("--queue", q, "--until-empty", "--body-type", "jsonb", "--shards",
                         str(SHARDS), env={"SLUICE_DEAD_LETTER": "reject"}, timeout=120)
    t.expect(rc == 0, "sluice --until-empty with SLUICE_DEAD_LETTER=reject exits 0", f"exit {rc}")
    good, _, poison = split_expectations([e for _, e in made])
    wrong = compare_rows(read_rows(t, q, "jsonb"), good).samples("missing", "extra", "wrong",
                                                                 "dups")
    t.expect(not wrong, f"the {len(good)} good messages are rows, each once with its body",
             wrong)
    deadline = time.monotonic() + 10  # the broker dead-letters a reject asynchronously
    while t.ready(rejected) < len(poison) and time.monotonic() < deadline:
        time.sleep(0.1)
    got = []
    while (m := t.channel().basic_get(rejected, auto_ack=True))[0]:
        deaths = (m[1].headers or {}).get("x-death") or [{}]
        got.append((md5(m[2]), deaths[0].get("reason")))
    wrong = compare_rows(got, {m: "rejected" for m in poison}).samples("missing", "extra",
                                                                      "wrong", "dups")
    t.expect(not wrong, f"the {len(poison)} poison messages were rejected to the queue's "
             "dead-letter exchange, each once", wrong)
    dead = 0
    if t.table_exists("sluice_dead_letters"):
        dead = t.scalar("SELECT count(*) FROM sluice_dead_letters WHERE queue = %s", q)
    t.expect(dead == 0, "no dead-letter rows in reject mode", dead)
    got = t.wait_broker(q, ready=0, unacked=0)
    t.expect(got["ready"] == 0 and got["unacked"] == 0,
             f"queue {q}: nothing ready or unacked at the end", got)


def main(t):
    seed = int(os.environ.get("SLUICE_FAULT_SEED") or secrets.randbits(32))
    print(f"seed {seed} (SLUICE_FAULT_SEED={seed} repeats this run's schedule and messages)")
    rig = Rig(t)
    with t.section("reject: --dead-letter reject sends poison to the dead-letter exchange"):
        reject_mode(t, seed)
    scenarios = []
    try:
        for name, dedupe, body_type, short in (("dedupe", True, "jsonb", SHORT_SECONDS),
                                               ("no_dedupe", False, "text", 0)):
            each = SOAK_SECONDS / 2 if SOAK_SECONDS else short
            s = Scenario(t, rig, name, dedupe, body_type, seed, each)
            scenarios.append(s)
            with t.section(f"{name}: --body-type {body_type}"
                           f"{', --dedupe-key message_id' if dedupe else ''}"):
                s.run()
    finally:
        print_summary(seed, scenarios)


Test.main(main)
