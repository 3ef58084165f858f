"""SIGTERM mid-stream: sluice commits and acks what it holds and exits 0
within --drain-timeout without errors; what it committed is exactly what the
broker no longer holds; a restart with --until-empty completes the set with
every message exactly once. SIGTERM while every shard's COPY waits for a
table lock: the drain commits and acks the whole prefetch once the lock
goes. Two quick SIGTERMs during a drain that cannot finish (table locked):
sluice exits at once with status 1, and a restart still loses nothing."""

import signal
import time

import pika

from harness import Msg, Test, md5, simple_body

N = 60_000
N_HARD = 30_000
SHARDS = 2
PREFETCH = 4000  # the most one shard can hold unacked
DRAIN = 20


def numbered(tag, queue):
    def make(i):
        return Msg(simple_body(tag, i),
                   pika.BasicProperties(message_id=f"{tag}-{i}", delivery_mode=2), "", queue)
    return make


def start(t, q, *args):
    return t.sluice("--queue", q, "--batch-rows", "500", "--shards", str(SHARDS),
                    "--prefetch", str(PREFETCH), *args)


def expected(tag, n):
    return {f"{tag}-{i}": md5(simple_body(tag, i)) for i in range(n)}


def clean_sigterm(t):
    q = t.queue("clean")
    tag = f"c{t.suffix}"
    t.publish_parallel(q, numbered(tag, q), N)

    s = start(t, q, "--drain-timeout", str(DRAIN))
    # Well into the stream, with deliveries in flight.
    t.wait_until(lambda: t.count(q) >= N // 10, 30, f"{N // 10} committed rows",
                 interval=0.02)
    before = t.count(q)
    t.check(0 < before < N, "SIGTERM arrives mid-stream (some but not all rows committed)",
            f"{before} of {N}")
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    rc = s.expect_exit(DRAIN + 10, "sluice exits after SIGTERM")
    took = time.monotonic() - t0
    t.eq(rc, 0, "exit status after SIGTERM")
    t.check(took <= DRAIN, f"exited within --drain-timeout ({DRAIN} s)", f"{took:.1f} s")
    t.check(not s.lines("error"), "no error-level log lines", s.lines("error")[:3])

    committed = t.count(q)
    distinct = t.scalar(f'SELECT count(DISTINCT message_id) FROM "{q}"')
    t.check(before <= committed <= N, "committed rows after the drain: between the "
            "count at SIGTERM and N", f"{before} <= {committed} <= {N}")
    t.eq(distinct, committed, "no duplicates among the rows committed before SIGTERM")
    got = t.wait_broker(q, ready=N - committed, unacked=0)
    t.check(got["ready"] == N - committed and got["unacked"] == 0,
            "broker holds exactly the uncommitted messages, none unacked "
            "(everything committed was acked, nothing else was)",
            f"committed {committed}, ready {got['ready']}, unacked {got['unacked']}")

    s2 = start(t, q, "--until-empty")
    t.eq(s2.expect_exit(120), 0, "restart with --until-empty: exit status")
    t.check(not s2.lines("error"), "restart logged no errors", s2.lines("error")[:3])
    t.check_ids_md5(q, expected(tag, N), exactly_once=True)
    t.check_queue_drained(q)


def drain_blocked(t):
    """SIGTERM while every shard holds a full prefetch and its COPY waits
    for a lock: the drain waits, then commits and acks all of it."""
    q = t.queue("drain")
    tag = f"d{t.suffix}"
    t.publish_parallel(q, numbered(tag, q), N_HARD)
    t.create_envelope_table(q)
    held = SHARDS * PREFETCH
    with t.locked(q):
        s = start(t, q, "--drain-timeout", "30")
        t.wait_until(lambda: t.copies_waiting(q) == SHARDS, 20,
                     f"{SHARDS} sluice COPYs waiting for the lock")
        t.wait_until(lambda: t.broker_queue(q)["unacked"] == held, 20,
                     f"{held} deliveries unacked (full prefetch)", interval=0.3)
        s.signal(signal.SIGTERM)
        time.sleep(1)
        t.check(s.running(), "after SIGTERM sluice waits for its blocked COPYs")
    rc = s.expect_exit(30, "sluice exits once its COPYs can commit")
    t.eq(rc, 0, "exit status after the drain")
    t.check(not s.lines("error"), "no error-level log lines", s.lines("error")[:3])
    t.eq(t.count(q), held, "every message held at SIGTERM was committed")
    got = t.wait_broker(q, ready=N_HARD - held, unacked=0)
    t.check(got["ready"] == N_HARD - held and got["unacked"] == 0,
            "and acked: the broker holds only the rest", got)
    s2 = t.sluice("--queue", q, "--shards", str(SHARDS), "--until-empty")
    t.eq(s2.expect_exit(120), 0, "restart with --until-empty: exit status")
    t.check_ids_md5(q, expected(tag, N_HARD), exactly_once=True)
    t.check_queue_drained(q)


def double_signal(t):
    """Two SIGTERMs while the drain cannot finish (COPYs wait for a lock):
    the second one ends sluice at once with status 1; nothing is lost."""
    q = t.queue("hard")
    tag = f"h{t.suffix}"
    t.publish_parallel(q, numbered(tag, q), N_HARD)

    s = start(t, q, "--drain-timeout", "60")
    t.wait_until(lambda: t.count(q) > 0, 30, "the first committed rows", interval=0.02)
    with t.locked(q):
        t.check(t.count(q) < N_HARD, "table locked while messages remain",
                f"{t.count(q)} of {N_HARD} committed")
        t.wait_until(lambda: t.copies_waiting(q) > 0, 15, "a sluice COPY waiting for the lock")
        s.signal(signal.SIGTERM)
        time.sleep(0.5)
        t.check(s.running(), "after the first SIGTERM sluice waits for its blocked COPY")
        t0 = time.monotonic()
        s.signal(signal.SIGTERM)
        rc = s.expect_exit(10, "sluice exits after the second SIGTERM")
        took = time.monotonic() - t0
    t.eq(rc, 1, "exit status after a second SIGTERM")
    t.check(took < 2, "second signal: exit at once", f"{took:.2f} s")

    t.wait_until(lambda: t.broker_queue(q)["unacked"] == 0, 20,
                 "the broker to requeue what sluice held", interval=0.3)
    s2 = start(t, q, "--until-empty")
    t.eq(s2.expect_exit(120), 0, "restart with --until-empty: exit status")
    dups = t.check_ids_md5(q, expected(tag, N_HARD), exactly_once=False)
    t.check(dups <= SHARDS * PREFETCH,
            "duplicates only from deliveries unacked at the hard exit "
            f"(at most {SHARDS} x prefetch {PREFETCH})", f"{dups} duplicate rows")
    t.check_queue_drained(q)


def main(t):
    with t.section("SIGTERM mid-stream, then restart"):
        clean_sigterm(t)
    with t.section("SIGTERM while COPYs wait: drain commits all held"):
        drain_blocked(t)
    with t.section("second signal exits at once"):
        double_signal(t)


Test.main(main)
