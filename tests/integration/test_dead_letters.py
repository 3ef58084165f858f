"""Per-row errors, dead letters and deduplication against the real servers.

(a) Poison of every kind mixed into good messages (bad JSON into jsonb, a
    message_id with invalid UTF-8 or a NUL, a routing key longer than the
    table's varchar(64), a CHECK constraint): every good message lands exactly
    once, every poison message is one dead-letter row with its SQLSTATE and its
    body byte for byte, and the queue is empty with nothing unacked.
(b) --body-type text: invalid UTF-8 and NUL in the body.
(c) --dedupe-key message_id: the same messages delivered again add nothing;
    a message without a message_id is a dead letter (23502). header:NAME and
    body keys; an existing table without the unique index: exit 1 naming
    the setting.
(d) --dead-letter reject: poison goes to the queue's dead-letter exchange,
    good messages to the table, nothing to a dead-letter table."""

import hashlib
import json
import random

import pika
from psycopg import sql

from harness import Msg, Test, md5

GOOD = 3000


def props(mid, **kw):
    return pika.BasicProperties(message_id=mid, delivery_mode=2, **kw)


def good_msg(tag, i):
    return Msg(json.dumps({"tag": tag, "i": i, "pad": "x" * (i % 50)}).encode(),
               props(f"{tag}-{i}"))


def check_json_rows(t, table, tag, n):
    """The jsonb table holds good_msg(tag, i) for i < n, each exactly once
    (jsonb normalises the text: the JSON values are compared)."""
    rows = t.sql(sql.SQL("SELECT message_id, body::text FROM {}").format(sql.Identifier(table)))
    t.eq(len(rows), n, f"{table}: rows")
    got = {mid: json.loads(body) for mid, body in rows}
    t.eq(got, {f"{tag}-{i}": json.loads(good_msg(tag, i).body) for i in range(n)},
         f"{table}: every good message exactly once, with its JSON value")


def dead_letters(t, table):
    """{message_id: (sqlstate, md5 of body, target_table)} and the row count."""
    rows = t.sql(sql.SQL("SELECT message_id, sqlstate, md5(body), target_table, error FROM {}")
                 .format(sql.Identifier(table)))
    return {r[0]: r[1:] for r in rows}, len(rows), rows


def check_dead(t, table, expected, target):
    """expected: {message_id as stored: (sqlstate, body bytes)}."""
    got, n, rows = dead_letters(t, table)
    t.eq(n, len(expected), f"{table}: one dead letter per poison message")
    for mid, (state, body) in expected.items():
        row = got.get(mid)
        t.check(row is not None, f"dead letter for message {mid!r}", sorted(got)[:5])
        t.eq(row[0], state, f"dead letter {mid!r}: SQLSTATE")
        t.eq(row[1], md5(body), f"dead letter {mid!r}: body byte for byte")
        t.eq(row[2], target, f"dead letter {mid!r}: target_table")
    t.check(all(r[4] for r in rows), "every dead letter says why (error)")


def poison_rows(t):
    q = t.queue("poison")
    table = t.table(t.unique("poison_t"))
    dlt = t.table(t.unique("dead"))
    t.sql(sql.SQL("CREATE TABLE {} (exchange text, routing_key varchar(64), message_id text,"
                  " content_type text CHECK (content_type IS DISTINCT FROM 'poison/check'),"
                  " headers jsonb, published_at timestamptz, ingested_at timestamptz,"
                  " body jsonb)").format(sql.Identifier(table)))
    long_key = "k" * 100
    ex = t.exchange("long", q, [q, long_key])

    # poison message -> (message_id as the dead-letter row shows it, SQLSTATE)
    poison = [
        (Msg(b'{"not json', props("p-json")), "p-json", "22P02"),
        (Msg(b"plain words", props("p-words")), "p-words", "22P02"),
        (Msg(b'{"ok": 1}', props(b"p-utf8-\xff\xfe")), "p-utf8-\ufffd\ufffd", "22021"),
        (Msg(b'{"ok": 2}', props(b"p-nul-\x00-x")), "p-nul-\ufffd-x", "22021"),
        (Msg(b'{"ok": 3}', props("p-long"), ex, long_key), "p-long", "22001"),
        (Msg(b'{"ok": 4}', props("p-check", content_type="poison/check")), "p-check", "23514"),
    ]
    msgs = [good_msg("g", i) for i in range(GOOD)]
    rng = random.Random(4)
    # Twice each: at random places, and the same kinds back to back.
    for m, _, _ in poison:
        msgs.insert(rng.randrange(len(msgs)), m)
    spot = rng.randrange(len(msgs))
    for m, mid, state in poison:
        twin = Msg(m.body, props(m.props.message_id + (b"-2" if isinstance(
            m.props.message_id, bytes) else "-2"), content_type=m.props.content_type),
            m.exchange, m.routing_key)
        msgs.insert(spot, twin)
    t.publish(q, msgs)

    rc, log = t.run_sluice("--queue", q, "--table", table, "--body-type", "jsonb",
                           "--dead-letter-table", dlt, "--batch-rows", "500",
                           "--until-empty", timeout=120)
    t.eq(rc, 0, "poison: sluice exit status")
    check_json_rows(t, table, "g", GOOD)
    expected = {}
    for m, mid, state in poison:
        expected[mid] = (state, m.body)
        expected[mid + "-2"] = (state, m.body)
    check_dead(t, dlt, expected, table)
    t.check_queue_drained(q)
    t.check("isolating the rows at fault" in log, "the log says a batch is being isolated")


def text_body(t):
    q = t.queue("text")
    dlt = t.table(t.unique("dead_text"))
    bad = {"t-utf8": b"caf\xe9", "t-nul": b"a\x00b", "t-lone": b"\xc3"}
    msgs = [Msg(f"text {i} ünïcødé".encode(), props(f"t-{i}")) for i in range(500)]
    for k, (mid, body) in enumerate(bad.items()):
        msgs.insert(100 * k + 7, Msg(body, props(mid)))
    t.publish(q, msgs)
    rc, _ = t.run_sluice("--queue", q, "--body-type", "text", "--dead-letter-table", dlt,
                         "--until-empty", timeout=60)
    t.eq(rc, 0, "text: sluice exit status")
    t.eq(t.count(q), 500, "text: good rows")
    check_dead(t, dlt, {mid: ("22021", body) for mid, body in bad.items()}, q)
    t.check_queue_drained(q)


def dedupe(t):
    q = t.queue("dedupe")
    dlt = t.table(t.unique("dead_dd"))
    run = ("--queue", q, "--dedupe-key", "message_id", "--dead-letter-table", dlt,
           "--until-empty")
    first = [good_msg("d", i) for i in range(1000)]
    t.publish(q, first)
    rc, _ = t.run_sluice(*run, timeout=60)
    t.eq(rc, 0, "dedupe: first run")
    # Delivered again (as after a lost ack), with new ones and keyless ones.
    again = first[::3] + [good_msg("d", i) for i in range(1000, 1200)]
    keyless = [Msg(f"no id {i}".encode(), pika.BasicProperties(delivery_mode=2))
               for i in range(3)]
    t.publish(q, again + keyless)
    rc, _ = t.run_sluice(*run, timeout=60)
    t.eq(rc, 0, "dedupe: second run")
    t.check_ids_md5(q, {f"d-{i}": md5(good_msg("d", i).body) for i in range(1200)})
    t.eq(t.scalar(sql.SQL("SELECT count(*) FROM {} WHERE dedupe_key = message_id")
                  .format(sql.Identifier(q))), 1200, "dedupe_key holds the message_id")
    got, n, _ = dead_letters(t, dlt)
    t.eq(n, 3, "dedupe: the keyless messages are dead letters")
    t.check(all(v[0] == "23502" for v in got.values()), "keyless: SQLSTATE 23502",
            list(got.values())[:3])
    t.check_queue_drained(q)

    # A header as the key; an integer header's key is its decimal text.
    qh = t.queue("dd_header")
    hmsgs = [Msg(f"h{i}".encode(), props(f"h{i}", headers={"event-id": 500 + i % 40}))
             for i in range(120)]
    t.publish(qh, hmsgs)
    rc, _ = t.run_sluice("--queue", qh, "--dedupe-key", "header:event-id",
                         "--dead-letter-table", dlt, "--until-empty", timeout=60)
    t.eq(rc, 0, "header key: exit status")
    t.eq(sorted(r[0] for r in t.sql(sql.SQL("SELECT dedupe_key FROM {}")
                                    .format(sql.Identifier(qh)))),
         sorted(str(500 + i) for i in range(40)), "header key: one row per key value")

    # The body's SHA-256 as the key.
    qb = t.queue("dd_body")
    bodies = [f"body {i % 25}".encode() for i in range(100)]
    t.publish(qb, [Msg(b, props(f"b{i}")) for i, b in enumerate(bodies)])
    rc, _ = t.run_sluice("--queue", qb, "--dedupe-key", "body", "--dead-letter-table", dlt,
                         "--until-empty", timeout=60)
    t.eq(rc, 0, "body key: exit status")
    t.eq(sorted(r[0] for r in t.sql(sql.SQL("SELECT dedupe_key FROM {}")
                                    .format(sql.Identifier(qb)))),
         sorted(hashlib.sha256(f"body {i}".encode()).hexdigest() for i in range(25)),
         "body key: one row per distinct body, keyed by its SHA-256")

    # An existing table without the unique index.
    qn = t.queue("dd_noindex")
    t.publish(qn, [good_msg("n", i) for i in range(5)])
    t.sql(sql.SQL("CREATE TABLE {} (exchange text, routing_key text, message_id text,"
                  " content_type text, headers jsonb, published_at timestamptz,"
                  " ingested_at timestamptz, body bytea, dedupe_key text)")
          .format(sql.Identifier(qn)))
    rc, log = t.run_sluice("--queue", qn, "--dedupe-key", "message_id", "--until-empty",
                           timeout=30)
    t.eq(rc, 1, "dedupe without a unique index: exit status")
    t.check("SLUICE_DEDUPE_KEY" in log and "CREATE UNIQUE INDEX" in log,
            "the error names SLUICE_DEDUPE_KEY and the statement to run", log[-300:])
    t.eq(t.ready(qn), 5, "dedupe without a unique index: messages stay in the queue")


def reject(t):
    dlx = t.unique("dlx")
    ch = t.channel()
    ch.exchange_declare(dlx, "fanout", durable=False)
    t.exchanges.append(dlx)
    parked = t.queue("parked")
    ch.queue_bind(parked, dlx)
    q = t.unique("rej")
    ch.queue_declare(q, durable=True, arguments={"x-dead-letter-exchange": dlx})
    t.queues.append(q)
    t.tables.append(q)
    dlt = t.table(t.unique("dead_rej"))
    msgs = [good_msg("r", i) for i in range(800)]
    bad = [Msg(b"not json %d" % k, props(f"bad-{k}")) for k in range(4)]
    for k, m in enumerate(bad):
        msgs.insert(150 * k + 3, m)
    msgs.append(Msg(b"{last", props("bad-last")))  # the batch's last tag is a reject
    t.publish(q, msgs)
    rc, _ = t.run_sluice("--queue", q, "--body-type", "jsonb", "--dead-letter", "reject",
                         "--dead-letter-table", dlt, "--until-empty", timeout=60)
    t.eq(rc, 0, "reject: sluice exit status")
    check_json_rows(t, q, "r", 800)
    t.wait_ready(parked, 5, timeout=15)
    t.check(not t.table_exists(dlt), "reject: no dead-letter table is created")
    ids = set()
    while (got := ch.basic_get(parked, auto_ack=True))[0]:
        ids.add(got[1].message_id)
        t.check(got[1].headers and got[1].headers.get("x-death"),
                "a rejected message carries RabbitMQ's x-death header")
    t.eq(ids, {f"bad-{k}" for k in range(4)} | {"bad-last"},
         "reject: the poison messages are on the dead-letter exchange's queue")
    t.check_queue_drained(q)


def main(t):
    t.section("poison of every kind into jsonb")
    poison_rows(t)
    t.section("poison into text")
    text_body(t)
    t.section("--dedupe-key")
    dedupe(t)
    t.section("--dead-letter reject")
    reject(t)


if __name__ == "__main__":
    Test.main(main)
