"""AMQP heartbeats with ?heartbeat=1 in RABBITMQ_URL.

(a) Idle: sluice consumes an empty queue for ~6 s. The broker would close a
    connection whose heartbeats stopped (after ~2 s); then 1000 messages are
    published and must all arrive, with sluice still running.
(b) Stalled database: every shard's COPY waits 5 s for a table lock; the
    broker must not drop sluice meanwhile, and everything arrives after.
(c) Dead peer: a TCP proxy between sluice and the broker stops forwarding in
    both directions while keeping both sockets open. sluice must notice the
    silence within 10 s, warn about missed heartbeats and keep running
    (reconnecting with backoff); once the proxy forwards again, every
    message arrives (those the dead connections held are redelivered)."""

import os
import signal
import subprocess
import time
import urllib.parse

import pika

from harness import ENV, SERVERS, Msg, Proxy, Test, md5, simple_body

SHARDS = 2


def url_via(port, query="heartbeat=1"):
    u = urllib.parse.urlsplit(ENV["RABBITMQ_URL"])
    netloc = u.netloc if port is None else f"{u.netloc.rsplit(':', 1)[0]}:{port}"
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path or "/", query, ""))


def local_ports_to(pid, remote_port):
    """Local ports of pid's TCP sockets connected to 127.0.0.1:remote_port."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    ports.append(int(local.rsplit(":", 1)[1], 16))
    return ports


def broker_timeouts(ports):
    """Negotiated heartbeat (s) of the broker's connections from these ports."""
    out = subprocess.run([str(SERVERS), "rabbitmqctl", "-q", "list_connections",
                          "--no-table-headers", "peer_port", "timeout"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    got = {}
    for line in out.splitlines():
        f = line.split("\t")
        if len(f) == 2 and f[0].isdigit() and int(f[0]) in ports:
            got[int(f[0])] = int(f[1])
    return got


def numbered(tag, n, start=0):
    return [Msg(simple_body(tag, i), pika.BasicProperties(message_id=f"{tag}-{i}"))
            for i in range(start, start + n)]


def expected(tag, n):
    return {f"{tag}-{i}": md5(simple_body(tag, i)) for i in range(n)}


def idle(t):
    q = t.queue("idle")
    amqp_port = urllib.parse.urlsplit(ENV["RABBITMQ_URL"]).port
    s = t.sluice("--queue", q, "--shards", str(SHARDS), env={"RABBITMQ_URL": url_via(None)})
    t.wait_until(lambda: t.broker_queue(q)["consumers"] == SHARDS, 20,
                 f"{SHARDS} consumers on {q}", interval=0.3)
    ports = local_ports_to(s.pid, amqp_port)
    t.eq(len(ports), SHARDS, "sluice's AMQP connections")
    t.eq(broker_timeouts(ports), {p: 1 for p in ports},
         "heartbeat negotiated to 1 s on every connection (rabbitmqctl list_connections)")
    time.sleep(6)
    t.check(s.running(), "sluice still running after 6 s idle")
    t.eq(t.broker_queue(q)["consumers"], SHARDS, "consumers still on the queue after 6 s idle")
    t.publish(q, numbered("i" + t.suffix, 1000), wait=False)  # sluice consumes them
    t.wait_until(lambda: t.count(q) >= 1000, 15, "1000 rows after the idle period")
    t.check(s.running(), "sluice still running after the messages arrived")
    s.signal(signal.SIGTERM)
    t.eq(s.expect_exit(30), 0, "exit status after SIGTERM")
    t.check(not s.lines("error"), "no error-level log lines", s.lines("error")[:3])
    t.check_ids_md5(q, expected("i" + t.suffix, 1000))
    t.check_queue_drained(q)


def stalled_copy(t):
    """The broker must keep sluice's connections while every shard's COPY
    waits on PostgreSQL (here: a table lock) for 5 s, i.e. heartbeats go on
    while a shard waits for its database."""
    q = t.queue("stall")
    tag = "s" + t.suffix
    n = 12_000
    t.publish(q, numbered(tag, n))
    t.create_envelope_table(q)
    with t.locked(q):
        s = t.sluice("--queue", q, "--shards", str(SHARDS), "--batch-rows", "500",
                     env={"RABBITMQ_URL": url_via(None)})
        t.wait_until(lambda: t.copies_waiting(q) == SHARDS, 20,
                     f"{SHARDS} sluice COPYs waiting for the lock")
        time.sleep(5)
        t.check(s.running(), "sluice still running after its COPYs waited 5 s")
        t.eq(t.broker_queue(q)["consumers"], SHARDS, "consumers still on the queue")
    t.wait_until(lambda: t.count(q) >= n, 30, f"{n} rows after the lock went")
    t.check(s.running(), "sluice still running after catching up")
    s.signal(signal.SIGTERM)
    t.eq(s.expect_exit(30), 0, "exit status after SIGTERM")
    t.check(not s.lines("error"), "no error-level log lines", s.lines("error")[:3])
    t.check_ids_md5(q, expected(tag, n))
    t.check_queue_drained(q)


def dead_peer(t):
    q = t.queue("dead")
    tag = "d" + t.suffix
    amqp_port = urllib.parse.urlsplit(ENV["RABBITMQ_URL"]).port
    proxy = Proxy(("127.0.0.1", amqp_port))
    try:
        t.publish(q, numbered(tag, 1000))
        s = t.sluice("--queue", q, "--shards", str(SHARDS),
                     env={"RABBITMQ_URL": url_via(proxy.port)})
        t.wait_until(lambda: t.count(q) >= 1000, 20, "the first 1000 rows through the proxy")
        t.eq(broker_timeouts(proxy.upstream_ports()), {p: 1 for p in proxy.upstream_ports()},
             "heartbeat negotiated to 1 s through the proxy")
        proxy.pause()
        t0 = time.monotonic()
        t.publish(q, numbered(tag, 1000, start=1000), wait=False)  # delivered into the dead link
        missed = lambda: [l for l in s.lines("warn") if "heartbeat" in l]
        t.wait_until(lambda: len(missed()) >= SHARDS or not s.running(), 10,
                     "every shard to warn about missed heartbeats")
        print(f"  missed heartbeats noticed {time.monotonic() - t0:.1f} s after the proxy "
              f"stopped: {missed()[0]}")
        t.check(s.running(), "sluice keeps running (reconnecting) when the broker goes silent")
        t.check(not s.lines("error"), "no error-level log lines", s.lines("error")[:3])
        proxy.resume()  # the new connections (and the dead ones, reset by now) go through
        t.wait_until(lambda: t.count(q) >= 2000, 60, "2000 rows once the proxy forwards again",
                     interval=0.3)
        t.check(s.running(), "sluice still running after catching up")
        s.signal(signal.SIGTERM)
        t.eq(s.expect_exit(30), 0, "exit status after SIGTERM")
    finally:
        proxy.close()
    dups = t.check_ids_md5(q, expected(tag, 2000), exactly_once=False)
    t.check(dups <= SHARDS * 4000, "duplicates only from deliveries unacked when the link "
            "died (at most shards x prefetch)", f"{dups} duplicate rows")
    t.check_queue_drained(q)


def main(t):
    with t.section("idle connection keeps its heartbeats"):
        idle(t)
    with t.section("heartbeats go on while COPYs wait"):
        stalled_copy(t)
    with t.section("dead peer is detected and sluice reconnects"):
        dead_peer(t)


Test.main(main)
