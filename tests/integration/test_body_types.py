"""--body-type jsonb and text: the created body column has that type and holds
exactly the published JSON value / UTF-8 text. An existing table whose body
column has another type: exit 1 naming SLUICE_BODY_TYPE, nothing consumed."""

import json

import pika
from psycopg import sql

from harness import Msg, Test, canon

JSON_DOCS = [
    '{"a": 1, "b": [1, 2, 3], "c": {"d": null}}',
    "{}", "[]", '[1, "two", 3.5, false, null, {"x": []}]',
    "42", "-7.25", "12345678901234567890", "true", "null",
    '"a string with \\"quotes\\", \\\\ and \\u00fcn\\u00efc\\u00f8d\\u00e9"',
    '"UTF-8 as is: 日本語 🚀"',
    '{"l1": {"l2": {"l3": [{"x": "y"}, [[[]]]]}}}',
    '  {  "spaced"  :  true ,"tab\\t":"\\n"}  \n',
] + [json.dumps({"i": i, "name": f"n{i}", "tags": ["a", i % 3 == 0, None],
                 "u": "ünïcødé 日本", "nested": {"v": [i, -i, i / 4]}}, ensure_ascii=i % 2 == 0)
     for i in range(500)]

TEXTS = [
    "", "plain ascii", "héllo wörld", "日本語のテキスト", "emoji 🚀🦀 and 𝄞",
    "line1\nline2\r\n\ttab \\backslash\\ 'single' \"double\"",
    "COPY-ish \\N \\. \x01 control chars",
    "long " + "ß∂ƒ©˙∆˚¬…æ" * 10_000,
] + [f"message {i}: Grüße aus Köln — 東京 — {'🙂' * (i % 7)}" for i in range(500)]


def publish(t, q, bodies):
    msgs = [Msg(b.encode(), pika.BasicProperties(message_id=str(i), content_type="x"), "", q)
            for i, b in enumerate(bodies)]
    t.publish(q, msgs)


def stored(t, table):
    rows = t.sql(sql.SQL("SELECT message_id, body FROM {}").format(sql.Identifier(table)))
    out = {}
    for mid, body in rows:
        if mid in out:
            t.fail(f"{table}: message {mid} stored twice")
        out[mid] = body
    return out


def check_type_mismatch(t, table, body_args, what):
    q = t.queue(f"mis{len(t.queues)}")
    publish(t, q, ['{"k": 1}'] * 10)
    before = t.count(table)
    rc, log = t.run_sluice("--queue", q, "--table", table, *body_args, "--until-empty",
                           timeout=30)
    t.eq(rc, 1, f"{what}: exit status")
    errors = [l for l in log.splitlines() if " error [" in l]
    t.check(any("SLUICE_BODY_TYPE" in l for l in errors),
            f"{what}: an error line names SLUICE_BODY_TYPE", errors[:3])
    t.eq(t.count(table), before, f"{what}: no rows written")
    t.eq(t.ready(q), 10, f"{what}: messages still in the queue")


def main(t):
    # jsonb, chosen through the environment variable
    qj = t.queue("jsonb")
    publish(t, qj, JSON_DOCS)
    rc, _ = t.run_sluice("--queue", qj, "--until-empty", env={"SLUICE_BODY_TYPE": "jsonb"},
                         timeout=60)
    t.eq(rc, 0, "jsonb: sluice exit status")
    t.eq(t.column_types(qj)["body"], "jsonb", "jsonb: body column type")
    got = stored(t, qj)
    t.eq(len(got), len(JSON_DOCS), "jsonb: rows")
    wrong = [i for i, d in enumerate(JSON_DOCS) if canon(got.get(str(i), "<missing>"))
             != canon(json.loads(d))]
    t.check(not wrong, "jsonb: every body equals the published JSON value",
            [(JSON_DOCS[i][:60], got.get(str(i))) for i in wrong[:3]])
    t.check_queue_drained(qj)

    # text
    qt = t.queue("text")
    publish(t, qt, TEXTS)
    rc, _ = t.run_sluice("--queue", qt, "--until-empty", "--body-type", "text", timeout=60)
    t.eq(rc, 0, "text: sluice exit status")
    t.eq(t.column_types(qt)["body"], "text", "text: body column type")
    got = stored(t, qt)
    t.eq(len(got), len(TEXTS), "text: rows")
    wrong = [i for i, s in enumerate(TEXTS) if got.get(str(i)) != s]
    t.check(not wrong, "text: every body equals the published UTF-8 text",
            [(TEXTS[i][:40], (got.get(str(i)) or "")[:40]) for i in wrong[:3]])
    t.check_queue_drained(qt)

    # existing tables whose body type differs from --body-type
    check_type_mismatch(t, qt, ["--body-type", "jsonb"], "text table, --body-type jsonb")
    check_type_mismatch(t, qj, [], "jsonb table, default --body-type bytea")


Test.main(main)
