"""--shards 4 on one queue: four consumers on the queue and four sluice
sessions copying into the table at once; every message exactly once.

To observe the shards while they work, the test holds a SHARE lock on the
(pre-created) table when sluice starts: each shard's first COPY then waits,
so the broker must show 4 consumers and PostgreSQL 4 sluice sessions with a
COPY into this table waiting for the lock. Releasing the lock lets them run
to the end (--until-empty)."""

import time

import pika

from harness import Msg, Test, md5, simple_body

N = 40_000
SHARDS = 4


def main(t):
    q = t.queue("events")
    tag = f"s{t.suffix}"
    make = lambda i: Msg(simple_body(tag, i),  # noqa: E731
                         pika.BasicProperties(message_id=f"{tag}-{i}"), "", q)
    t.publish_parallel(q, make, N)
    t.create_envelope_table(q)

    with t.locked(q):
        s = t.sluice("--queue", q, "--shards", str(SHARDS), "--until-empty",
                     "--batch-rows", "1000")
        deadline = time.monotonic() + 20
        while t.copies_waiting(q) < SHARDS and time.monotonic() < deadline and s.running():
            time.sleep(0.1)
        t.eq(t.copies_waiting(q), SHARDS, "sluice sessions with a COPY into the table, "
             "all waiting (application_name sluice in pg_stat_activity)")
        got = t.broker_queue(q)
        t.eq(got["consumers"], SHARDS, "consumers on the queue (rabbitmqctl)")
        t.check(got["unacked"] >= SHARDS, "each shard holds deliveries unacked while "
                "its COPY waits", f"{got['unacked']} unacked")
        t.eq(t.count(q), 0, "nothing committed while the table is locked")

    t.eq(s.expect_exit(120), 0, "sluice --until-empty exit status")
    t.check(not s.lines("error"), "no error-level log lines", s.lines("error")[:3])
    t.check_ids_md5(q, {f"{tag}-{i}": md5(simple_body(tag, i)) for i in range(N)})
    t.check_queue_drained(q)


Test.main(main)
