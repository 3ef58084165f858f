"""100k varied messages through `sluice --until-empty --shards 2`: every
message arrives exactly once with its body byte-identical and its envelope
(exchange, routing key, message id, content type, headers as JSON, published
timestamp) intact, and the queue ends empty with nothing unacked."""

import datetime
import json
import time

import pika
from psycopg import sql

from harness import Msg, Test, canon, det_bytes, json_of_header, md5

N = 100_000
MIB = 1 << 20
BIG = {10_001, 33_333, 50_000, 77_777, 99_998}  # exactly 1 MiB bodies
T0 = 1_700_000_000  # published_at of message i is T0 + i
WHEN = datetime.datetime(2024, 2, 29, 23, 59, 58, tzinfo=datetime.timezone.utc)


def no_props(i):
    # 7: default exchange, 3: the direct exchange (i % 10 == 3 below)
    return i % 50 in (3, 7)


def via_exchange(i):
    return i % 10 == 3


def body(run, i):
    """Deterministic body of message i: which kind follows from i."""
    if i in BIG:
        return det_bytes(f"{run}/big/{i}", MIB)
    if i % 1000 == 1:
        return b""
    k = i % 4
    if k == 0:  # JSON
        return json.dumps({"i": i, "h": det_bytes(f"{run}/{i}", 8).hex(),
                           "s": "ünïcødé ✓", "list": [i, None, True]},
                          ensure_ascii=False).encode()
    if k == 1:  # binary with NULs
        return b"\x00" + det_bytes(f"{run}/{i}", 1 + i % 300) + b"\x00\x00" + str(i).encode()
    if k == 2:  # UTF-8 text with 2-, 3- and 4-byte characters
        return (f"#{i} héllo wörld — 日本語のテキスト 🚀🦀 " * (1 + i % 5)).encode()
    return det_bytes(f"{run}/{i}", 1 + (i * 31) % 500) + str(i).encode()


CONTENT_TYPES = ["application/json", "application/octet-stream",
                 "text/plain; charset=utf-8", "application/x-binary"]


def headers(i):
    if i % 50 == 13:
        return None  # properties, but no headers table
    if i % 50 == 17:
        return {}
    h = {"seq": i, "kind": CONTENT_TYPES[i % 4], "even": i % 2 == 0,
         "neg": -i, "big": 2 ** 40 + i,
         "nested": {"depth": 1, "inner": {"k": f"v{i % 7}", "ok": False}},
         "list": [i % 5, "x", True, {"a": 1}, ["deep"]]}
    if i % 10 == 0:
        h["raw"] = b"\x00\xffab" + i.to_bytes(4, "big")  # -> base64
        h["when"] = WHEN  # -> ISO 8601
        h["text"] = "日本 \"quoted\" back\\slash\ttab"
    return h


def message(run, queue, exchange, i):
    b = body(run, i)
    if no_props(i):
        props = None
    elif i % 50 == 13:
        props = pika.BasicProperties(message_id=f"{run}-{i}")
    else:
        props = pika.BasicProperties(
            message_id=f"{run}-{i}", content_type=CONTENT_TYPES[i % 4],
            timestamp=T0 + i, headers=headers(i), delivery_mode=2 if i % 3 == 0 else 1)
    if via_exchange(i):
        return Msg(b, props, exchange, f"rk.{i % 3}")
    return Msg(b, props, "", queue)


def main(t):
    q = t.queue("events")
    x = t.exchange("direct", q, ["rk.0", "rk.1", "rk.2"])
    run = t.suffix
    make = lambda i: message(run, q, x, i)  # noqa: E731
    t.publish_parallel(q, make, N)

    started = time.time()
    s = t.sluice("--queue", q, "--until-empty", "--shards", "2")
    rc = s.expect_exit(150)
    t.eq(rc, 0, "sluice --until-empty exit status")
    t.check(not s.lines("error"), "sluice logged no errors", s.lines("error")[:3])

    t.eq(t.column_types(q)["body"], "bytea", "body column type (default)")
    rows = t.sql(sql.SQL(
        "SELECT message_id, exchange, routing_key, content_type, headers,"
        "       extract(epoch FROM published_at)::bigint, md5(body), length(body),"
        "       extract(epoch FROM ingested_at)"
        "  FROM {}").format(sql.Identifier(q)))
    t.eq(len(rows), N, "row count")

    by_id, anon = {}, []
    for r in rows:
        if r[0] is None:
            anon.append(r)
        elif r[0] in by_id:
            t.fail(f"message_id {r[0]} stored twice")
        else:
            by_id[r[0]] = r
    n_anon = sum(1 for i in range(N) if no_props(i))
    t.eq(len(by_id), N - n_anon, "distinct message_ids")
    t.eq(len(anon), n_anon, "rows without message_id (published with no properties)")

    # Messages with properties: compare every column.
    bad = {}
    def mismatch(col, i, got, want):
        bad.setdefault(col, []).append(f"#{i}: got {got!r:.80}, want {want!r:.80}")

    anon_want = []
    now = time.time()
    for i in range(N):
        m = make(i)
        if m.props is None:
            anon_want.append((m.exchange, m.routing_key, md5(m.body), len(m.body)))
            continue
        r = by_id.get(f"{run}-{i}")
        if r is None:
            mismatch("missing", i, None, f"{run}-{i}")
            continue
        _, exch, rk, ctype, hdrs, pub, digest, length, ingested = r
        if (digest, length) != (md5(m.body), len(m.body)):
            mismatch("body", i, (digest, length), (md5(m.body), len(m.body)))
        if exch != m.exchange:
            mismatch("exchange", i, exch, m.exchange)
        if rk != m.routing_key:
            mismatch("routing_key", i, rk, m.routing_key)
        if ctype != m.props.content_type:
            mismatch("content_type", i, ctype, m.props.content_type)
        want_h = None if m.props.headers is None else json_of_header(m.props.headers)
        if (hdrs is None) != (want_h is None) or canon(hdrs) != canon(want_h):
            mismatch("headers", i, hdrs, want_h)
        if pub != m.props.timestamp:
            mismatch("published_at", i, pub, m.props.timestamp)
        if not (started - 5 <= float(ingested) <= now + 5):
            mismatch("ingested_at", i, float(ingested), (started, now))
    for col, what in [("missing", "every message with a message_id arrived"),
                      ("body", "bodies byte-identical (md5 and length)"),
                      ("exchange", "exchange column"), ("routing_key", "routing_key column"),
                      ("content_type", "content_type column"),
                      ("headers", "headers column equals the AMQP headers as JSON"),
                      ("published_at", "published_at equals the AMQP timestamp"),
                      ("ingested_at", "ingested_at is the ingest time")]:
        errs = bad.get(col, [])
        t.check(not errs, what, f"{len(errs)} wrong, e.g. {errs[:3]}" if errs else None)

    # Messages without properties: identified by their (unique) bodies.
    anon_got = sorted((r[1], r[2], r[6], r[7]) for r in anon)
    t.check(anon_got == sorted(anon_want),
            "messages without properties arrived once each, bodies and routing intact",
            None if anon_got == sorted(anon_want) else
            f"{len(set(anon_want) - set(anon_got))} missing/wrong")
    t.check(all(r[3] is None and r[4] is None and r[5] is None for r in anon),
            "no properties -> content_type, headers, published_at are NULL")

    big = t.sql(sql.SQL("SELECT count(*) FROM {} WHERE length(body) = %s").format(
        sql.Identifier(q)), MIB)[0][0]
    t.eq(big, len(BIG), "rows with 1 MiB bodies")
    t.eq(t.scalar(sql.SQL("SELECT count(*) FROM {} WHERE length(body) = 0").format(
        sql.Identifier(q))), sum(1 for i in range(N) if body(run, i) == b""),
        "rows with empty bodies")
    t.check_queue_drained(q)


Test.main(main)
