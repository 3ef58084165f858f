#!/usr/bin/python3
"""The consumer sluice replaces, written the way such code usually is:
pika BlockingConnection + psycopg 3, one INSERT and one COMMIT per message,
then a single basic_ack. Only the idle exit is added, so a runner can time
the drain of a pre-filled queue.

Env: RABBITMQ_URL POSTGRES_DSN QUEUE TABLE PREFETCH(2000) IDLE_EXIT_MS(1000)
Last line on stdout: a JSON summary (msgs, first_msg_unix, last_commit_unix).
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
IDLE_EXIT_S = int(os.environ.get("IDLE_EXIT_MS", "1000")) / 1000

INSERT = sql.SQL(
    "INSERT INTO {} (exchange, routing_key, message_id, content_type, headers,"
    " published_at, body) VALUES (%s, %s, %s, %s, %s, %s, %s)"
).format(sql.Identifier(*TABLE.split(".")))

db = psycopg.connect(POSTGRES_DSN)
connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
channel = connection.channel()
channel.basic_qos(prefetch_count=PREFETCH)

stats = {"msgs": 0, "first_msg_unix": 0.0, "last_commit_unix": 0.0}
last_message = time.monotonic()


def on_message(ch, method, properties, body):
    global last_message
    if stats["msgs"] == 0:
        stats["first_msg_unix"] = time.time()
    published_at = None
    if properties.timestamp is not None:
        published_at = datetime.fromtimestamp(properties.timestamp, timezone.utc)
    headers = Jsonb(properties.headers) if properties.headers is not None else None
    with db.cursor() as cur:
        cur.execute(INSERT, (method.exchange, method.routing_key, properties.message_id,
                             properties.content_type, headers, published_at, body))
    db.commit()
    ch.basic_ack(delivery_tag=method.delivery_tag)
    stats["msgs"] += 1
    stats["last_commit_unix"] = time.time()
    last_message = time.monotonic()


def idle_check():
    # Every message is committed and acked inside its callback, so idle
    # means done.
    if time.monotonic() - last_message >= IDLE_EXIT_S:
        channel.stop_consuming()
    else:
        connection.call_later(max(0.01, last_message + IDLE_EXIT_S - time.monotonic()),
                              idle_check)


channel.basic_consume(queue=QUEUE, on_message_callback=on_message)
connection.call_later(IDLE_EXIT_S, idle_check)
channel.start_consuming()
connection.close()
db.close()
print(json.dumps({"system": "seed-python", **stats}), flush=True)
