"""Configuration errors: bad option values exit 2 naming the option; bad
credentials, a missing queue and unusable tables exit 1 with an error line
naming the setting; passwords never appear in the output; --help documents
every option (and README.md, if present, every flag in --help)."""

import re
import time
import urllib.parse

import pika

from harness import ENV, REPO, Msg, Test

SECRET = "Wr0ngSecret!x"
STEM = "Wr0ngSecret"  # absent from the output in any encoding of SECRET


def with_password(url, password):
    """url with its password replaced by `password` (percent-encoded)."""
    u = urllib.parse.urlsplit(url)
    netloc = f"{u.username}:{urllib.parse.quote(password, safe='')}@{u.hostname}:{u.port}"
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def error_lines(log):
    return [l for l in log.splitlines() if " error [" in l]


def usage_errors(t, q):
    cases = [  # (args, env, the name the message must contain)
        (["--prefetch", "0"], {}, "--prefetch"),
        (["--prefetch", "65536"], {}, "--prefetch"),
        (["--batch-bytes", "12X"], {}, "--batch-bytes"),
        (["--batch-rows", "many"], {}, "--batch-rows"),
        (["--body-type", "xml"], {}, "--body-type"),
        (["--shards", "-1"], {}, "--shards"),
        (["--linger-ms", "1.5"], {}, "--linger-ms"),
        (["--drain-timeout", "0"], {}, "--drain-timeout"),
        (["--log-level", "verbose"], {}, "--log-level"),
        (["--stats-interval", "x"], {}, "--stats-interval"),
        (["--frobnicate"], {}, "--frobnicate"),
        (["--table"], {}, "--table"),  # missing value
        ([], {"SLUICE_PREFETCH": "0"}, "SLUICE_PREFETCH"),
        ([], {"SLUICE_BATCH_BYTES": "1T"}, "SLUICE_BATCH_BYTES"),
        ([], {"SLUICE_UNTIL_EMPTY": "maybe"}, "SLUICE_UNTIL_EMPTY"),
        ([], {"RABBITMQ_URL": with_password(ENV["RABBITMQ_URL"], SECRET) + "?heartbeat=x"},
         "RABBITMQ_URL"),
        ([], {"RABBITMQ_URL": with_password(ENV["RABBITMQ_URL"], SECRET) + "?bogus=1"},
         "RABBITMQ_URL"),
    ]
    for args, env, name in cases:
        what = " ".join(args) or " ".join(f"{k}={v}" for k, v in env.items())
        rc, out = t.run_sluice("--queue", q, *args, env=env, timeout=10)
        t.check(rc == 2 and name in out and STEM not in out,
                f"{what}: exit 2, message names {name}, no password",
                f"exit {rc}: {out.strip()[:200]}")
    rc, out = t.run_sluice(env={"SLUICE_QUEUE": None}, timeout=10)
    t.check(rc == 2 and "SLUICE_QUEUE" in out, "no queue: exit 2, message names SLUICE_QUEUE",
            f"exit {rc}: {out.strip()[:200]}")


def rabbitmq_password(t, q):
    url = with_password(ENV["RABBITMQ_URL"], SECRET)
    t0 = time.monotonic()
    rc, out = t.run_sluice("--queue", q, env={"RABBITMQ_URL": url}, timeout=30)
    took = time.monotonic() - t0
    t.check(rc not in (0, None), "wrong RabbitMQ password: non-zero exit", f"exit {rc}")
    t.check(took < 15, "wrong RabbitMQ password: exits quickly", f"{took:.1f} s")
    t.check_no_secret(out, STEM, "wrong RabbitMQ password")
    t.check(any("RABBITMQ_URL" in l for l in error_lines(out)),
            "wrong RabbitMQ password: an error line names RABBITMQ_URL", error_lines(out)[:3])


def postgres_password(t, q):
    dsn = ENV["POSTGRES_DSN"].replace(":sluice-local-pw@", f":{SECRET}@")
    t.check(dsn != ENV["POSTGRES_DSN"], "test setup: POSTGRES_DSN with a wrong password")
    rc, out = t.run_sluice("--queue", q, env={"POSTGRES_DSN": dsn}, timeout=30)
    t.eq(rc, 1, "wrong PostgreSQL password: exit status")
    t.check_no_secret(out, STEM, "wrong PostgreSQL password")
    t.check(any("POSTGRES_DSN" in l for l in error_lines(out)),
            "wrong PostgreSQL password: an error line names POSTGRES_DSN", error_lines(out)[:3])


def postgres_dsn_malformed(t, q):
    # An unencoded '%' in the password makes the URI invalid; whatever
    # libpq says about it, the password must not reach the output.
    dsn = ENV["POSTGRES_DSN"].replace(":sluice-local-pw@", f":{SECRET}%ZZ@")
    t.check(dsn != ENV["POSTGRES_DSN"], "test setup: POSTGRES_DSN with a malformed password")
    rc, out = t.run_sluice("--queue", q, env={"POSTGRES_DSN": dsn}, timeout=30)
    t.check(rc in (1, 2), "malformed POSTGRES_DSN: exit 1 or 2", f"exit {rc}")
    t.check("POSTGRES_DSN" in out, "malformed POSTGRES_DSN: the output names POSTGRES_DSN")
    t.check(STEM not in out, "malformed POSTGRES_DSN: output does not contain the password",
            [l for l in out.splitlines() if STEM in l][:2])


def table_in_missing_schema(t, q):
    table = f"{t.unique('noschema')}.events"
    rc, out = t.run_sluice("--queue", q, "--table", table, timeout=30)
    t.eq(rc, 1, "table in a schema that does not exist: exit status")
    t.check(any("SLUICE_TABLE" in l for l in error_lines(out)),
            "table in a schema that does not exist: an error line names SLUICE_TABLE",
            error_lines(out)[:3])


def table_errors(t, q):
    missing_q = t.unique("nosuchqueue")
    t.table(missing_q)
    rc, out = t.run_sluice("--queue", missing_q, timeout=30)
    t.eq(rc, 1, "queue that does not exist: exit status")
    t.check(any("SLUICE_QUEUE" in l for l in error_lines(out)),
            "queue that does not exist: an error line names SLUICE_QUEUE", error_lines(out)[:3])

    partial = t.table(t.unique("partial"))
    t.sql(f'CREATE TABLE "{partial}" (exchange text, body bytea, extra int)')
    rc, out = t.run_sluice("--queue", q, "--table", partial, timeout=30)
    t.eq(rc, 1, "table lacking columns: exit status")
    lacking = ["routing_key", "message_id", "content_type", "headers", "published_at",
               "ingested_at"]
    errs = error_lines(out)
    listing = [l for l in errs if all(c in l for c in lacking)]
    t.check(listing, f"table lacking columns: an error line lists {', '.join(lacking)}",
            errs[:3])
    t.check(not any("exchange" in l or "body" in l for l in listing),
            "and not the columns the table has (exchange, body)", listing[:1])

    absent = t.table(t.unique("absent"))
    rc, out = t.run_sluice("--queue", q, "--table", absent, "--no-create", timeout=30)
    t.eq(rc, 1, "--no-create with a missing table: exit status")
    t.check(error_lines(out), "--no-create with a missing table: an error line",
            out.strip()[-200:])
    t.check(not t.table_exists(absent), "--no-create: the table was not created")
    t.eq(t.ready(q), 3, "after the failed runs the queue still holds its messages")


def help_and_version(t, q):
    rc, out = t.run_sluice("--help", timeout=10)
    t.eq(rc, 0, "--help exit status")
    want = ["--rabbitmq-url", "--postgres-dsn", "--queue", "--table", "--shards",
            "--prefetch", "--batch-rows", "--batch-bytes", "--linger-ms", "--body-type",
            "--no-create", "--drain-timeout", "--until-empty", "--stats-interval",
            "--log-level", "--help", "--version",
            "RABBITMQ_URL", "POSTGRES_DSN", "SLUICE_QUEUE", "SLUICE_TABLE", "SLUICE_BODY_TYPE"]
    absent = [w for w in want if w not in out]
    t.check(not absent, "--help lists every option and its environment variable", absent)
    rc, ver = t.run_sluice("--version", timeout=10)
    t.eq(rc, 0, "--version exit status")
    t.check(ver.startswith("sluice "), "--version prints 'sluice <version>'", ver[:40])

    readme = REPO / "README.md"
    if not readme.exists():
        print("  skip README.md check: no README.md")
        return
    text = readme.read_text(errors="replace")
    flags = sorted(set(re.findall(r"--[a-z][a-z0-9-]+", out)))
    undocumented = [f for f in flags if f not in text]
    t.check(not undocumented, f"README.md mentions every flag of --help ({len(flags)})",
            undocumented)


def main(t):
    q = t.queue("events")
    t.publish(q, [Msg(b"x%d" % i, pika.BasicProperties(message_id=str(i))) for i in range(3)])
    for part in (help_and_version, usage_errors, table_errors, table_in_missing_schema,
                 rabbitmq_password, postgres_password, postgres_dsn_malformed):
        with t.section(part.__name__):
            part(t, q)


Test.main(main)
