#!/usr/bin/python3
"""What a careful Python user would write: pika BlockingConnection +
psycopg 3 binary COPY (cursor.copy / write_row) in batches of BATCH rows,
COMMIT, then one basic_ack(multiple=True) on the batch's last delivery tag.
A partial batch is flushed LINGER_MS after its first row (or after LINGER_MS
without deliveries), like sluice's --linger-ms.

ingested_at is stamped when the message is received, as sluice does.

Env: RABBITMQ_URL POSTGRES_DSN QUEUE TABLE PREFETCH(2000) BATCH(1000)
     LINGER_MS(20) IDLE_EXIT_MS(1000)
Last line on stdout: a JSON summary (msgs, batches, first_msg_unix, last_commit_unix).
Debian packages: python3-pika python3-psycopg.
"""
import json
import os
import time
from datetime import datetime, timezone

import pika
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@localhost:5672/")
POSTGRES_DSN = os.environ.get("POSTGRES_DSN", "")
QUEUE = os.environ["QUEUE"]
TABLE = os.environ.get("TABLE") or QUEUE
PREFETCH = int(os.environ.get("PREFETCH", "2000"))
BATCH = max(1, int(os.environ.get("BATCH", "1000")))
LINGER_S = int(os.environ.get("LINGER_MS", "20")) / 1000
IDLE_EXIT_S = int(os.environ.get("IDLE_EXIT_MS", "1000")) / 1000

COPY = sql.SQL(
    "COPY {} (exchange, routing_key, message_id, content_type, headers, published_at,"
    " ingested_at, body) FROM STDIN (FORMAT BINARY)"
).format(sql.Identifier(*TABLE.split(".")))
TYPES = ["text", "text", "text", "text", "jsonb", "timestamptz", "timestamptz", "bytea"]


def main():
    db = psycopg.connect(POSTGRES_DSN)
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)

    rows = []
    last_tag = None
    batch_started = 0.0
    last_message = time.monotonic()
    stats = {"msgs": 0, "batches": 0, "first_msg_unix": 0.0, "last_commit_unix": 0.0}

    def flush():
        nonlocal rows
        with db.cursor() as cur:
            with cur.copy(COPY) as copy:
                copy.set_types(TYPES)
                for row in rows:
                    copy.write_row(row)
        db.commit()
        # Only now is every row of the batch durable: ack them all at once.
        channel.basic_ack(delivery_tag=last_tag, multiple=True)
        stats["msgs"] += len(rows)
        stats["batches"] += 1
        stats["last_commit_unix"] = time.time()
        rows = []

    utc = timezone.utc
    for method, props, body in channel.consume(QUEUE, inactivity_timeout=LINGER_S):
        now = time.monotonic()
        if method is None:  # nothing arrived for LINGER_MS
            if rows:
                flush()
            elif now - last_message >= IDLE_EXIT_S:
                break
            continue
        if not rows:
            batch_started = now
            if not stats["first_msg_unix"]:
                stats["first_msg_unix"] = time.time()
        last_message = now
        rows.append((
            method.exchange,
            method.routing_key,
            props.message_id,
            props.content_type,
            Jsonb(props.headers) if props.headers is not None else None,
            datetime.fromtimestamp(props.timestamp, utc) if props.timestamp is not None else None,
            datetime.now(utc),
            body,
        ))
        last_tag = method.delivery_tag
        if len(rows) >= BATCH or now - batch_started >= LINGER_S:
            flush()

    # Idle: nothing is buffered, so cancel() rejects nothing; close cleanly.
    channel.cancel()
    connection.close()
    db.close()
    print(json.dumps({"system": "python-copy", **stats}), flush=True)


if __name__ == "__main__":
    main()
