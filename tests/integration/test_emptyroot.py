"""The static build (tools/static.sh) in a root shaped like distroless/static
(tools/emptyroot.sh: no libc, no NSS modules, distroless's nsswitch.conf),
run with chroot as uid 65532 in a clean environment, the way the image runs
it, reaching the servers by host NAME (they listen on 127.0.0.1):

  localhost      from the root's /etc/hosts: 2000 messages arrive exactly
                 once, byte-identical; sluice runs as 65532 inside the root
  /etc/hosts     names that only the root's /etc/hosts knows
  DNS            names that only a DNS server knows: this test serves them
                 on 127.53.0.1:53, the root's resolv.conf points there
  loadgen        the static loadgen publishes from inside the root

Skips (77) when build/static/sluice is missing or we are not root."""

import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "build" / "static"
UID = 65532

if not (STATIC / "sluice").is_file():
    print(f"test_emptyroot: SKIP: {STATIC / 'sluice'} is missing (run tools/static.sh)")
    sys.exit(77)
if os.geteuid() != 0:
    print("test_emptyroot: SKIP: chroot needs root")
    sys.exit(77)

TMP = Path(tempfile.mkdtemp(prefix="sluice-emptyroot-"))
ROOT = TMP / "root"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
# What the image sets; everything else of ours stays outside.
IMAGE_ENV = ["HOME=/home/nonroot", "PATH=/usr/local/bin",
             "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]


CHROOT_ARGV = [CHROOT, f"--userspec={UID}:{UID}", f"--groups={UID}", str(ROOT)]


def in_root(*argv):
    """argv run inside ROOT as uid/gid 65532 with only IMAGE_ENV."""
    return ["/usr/bin/env", "-i", *IMAGE_ENV, *CHROOT_ARGV, *argv]


# The harness runs SLUICE_BIN: this wrapper, which passes on only the two
# URLs (the harness sets them) into the image's environment.
WRAPPER = TMP / "sluice-in-root"
WRAPPER.write_text(
    "#!/bin/sh\n"
    "exec /usr/bin/env -i " + " ".join(map(shlex.quote, IMAGE_ENV)) +
    ' RABBITMQ_URL="$RABBITMQ_URL" POSTGRES_DSN="$POSTGRES_DSN" ' +
    " ".join(map(shlex.quote, CHROOT_ARGV)) + ' /usr/local/bin/sluice "$@"\n')
WRAPPER.chmod(0o755)
os.environ["SLUICE_BIN"] = str(WRAPPER)

import pika  # noqa: E402

from harness import ENV, Msg, Test, md5, simple_body  # noqa: E402


def by_name(url, host):
    """The servers' URL/DSN (127.0.0.1) with a host name instead."""
    assert "@127.0.0.1:" in url, url
    return url.replace("@127.0.0.1:", f"@{host}:")


def host_knows(name):
    """Whether this host's /etc/hosts names it (not resolved through DNS:
    this test sends no query past the loopback)."""
    return any(name in line.split()[1:] for line in
               Path("/etc/hosts").read_text().splitlines() if not line.startswith("#"))


class TinyDNS:
    """Answers A queries for `names` with 127.0.0.1 (AAAA: no data, anything
    else: NXDOMAIN) on UDP ADDR:53; counts the queries per name."""

    ADDR = "127.53.0.1"

    def __init__(self, names):
        self.names = {n.lower() for n in names}
        self.seen = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.ADDR, 53))
        self.sock.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            try:
                q, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            try:
                self.sock.sendto(self.answer(q), peer)
            except (ValueError, IndexError, struct.error):
                continue  # not a query we understand: no answer

    def answer(self, q):
        qid, flags, qdcount = struct.unpack("!HHH", q[:6])
        if qdcount != 1:
            raise ValueError("one question only")
        labels, i = [], 12
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode("ascii"))
            i += 1 + q[i]
        qtype, _qclass = struct.unpack("!HH", q[i + 1:i + 5])
        question = q[12:i + 5]
        name = ".".join(labels).lower()
        self.seen[name] = self.seen.get(name, 0) + 1
        rd = flags & 0x0100
        if name not in self.names:
            return struct.pack("!HHHHHH", qid, 0x8483 | rd, 1, 0, 0, 0) + question
        if qtype != 1:  # AAAA and others: the name exists, no such record
            return struct.pack("!HHHHHH", qid, 0x8480 | rd, 1, 0, 0, 0) + question
        rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + socket.inet_aton("127.0.0.1")
        return struct.pack("!HHHHHH", qid, 0x8480 | rd, 1, 1, 0, 0) + question + rr

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


def proc_identity(pid):
    """(uid, gid, root, exe) of a running process, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        root = os.readlink(f"/proc/{pid}/root")
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    ids = {}
    for line in status.splitlines():
        k, _, v = line.partition(":")
        if k in ("Uid", "Gid", "Groups"):
            ids[k] = v.split()
    return ids, root, exe


def ingest(t, host_mq, host_pg, n, what):
    """Publish n messages, run sluice --until-empty in the root against the
    servers by name, check every row and the empty queue."""
    q = t.queue(what)
    expected = {}
    msgs = []
    for i in range(n):
        body = simple_body(q, i)
        expected[f"{what}-{i}"] = md5(body)
        msgs.append(Msg(body, pika.BasicProperties(message_id=f"{what}-{i}")))
    t.publish(q, msgs)
    env = {"RABBITMQ_URL": by_name(ENV["RABBITMQ_URL"], host_mq),
           "POSTGRES_DSN": by_name(ENV["POSTGRES_DSN"], host_pg)}
    s = t.sluice("--queue", q, "--until-empty", env=env, label=f"sluice-{what}")
    t.eq(s.expect_exit(120), 0, f"sluice exit status ({what})")
    t.check(f"@{host_mq}:" in s.log(), f"sluice logs the broker as {host_mq}")
    t.check_ids_md5(q, expected)
    t.check_queue_drained(q)
    return s


def main(t):
    try:
        run_all(t)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)


def run_all(t):
    with t.section("the root"):
        subprocess.run([str(REPO / "tools" / "emptyroot.sh"), str(ROOT)], check=True)
        shared = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                  if ".so" in p.name or p.name.startswith("ld-linux")]
        t.eq(shared, [], "shared objects (libc, ld.so, NSS modules) in the root")
        nss = (ROOT / "etc/nsswitch.conf").read_text()
        t.check("hosts:          files dns" in nss and "passwd:         compat" in nss,
                "nsswitch.conf is distroless's (hosts: files dns, passwd: compat)")
        # DNS queries from the root go to this test's server (section DNS)
        # and never past the loopback.
        (ROOT / "etc/resolv.conf").write_text(
            f"nameserver {TinyDNS.ADDR}\noptions timeout:1 attempts:2\n")
        out = subprocess.run(in_root("/usr/local/bin/sluice", "--version"), check=True,
                             capture_output=True, text=True).stdout
        t.check("mimalloc" in out and "libpq 15." in out,
                "static sluice --version runs in the root", out.splitlines()[0])

    with t.section("localhost, as uid 65532 in the root"):
        q = t.queue("local")
        n = 2000
        expected = {str(i): md5(simple_body(q, i)) for i in range(n)}
        t.publish(q, [Msg(simple_body(q, i), pika.BasicProperties(message_id=str(i)))
                      for i in range(n)])
        t.create_envelope_table(q)  # so that its COPYs can be held up below
        env = {"RABBITMQ_URL": by_name(ENV["RABBITMQ_URL"], "localhost"),
               "POSTGRES_DSN": by_name(ENV["POSTGRES_DSN"], "localhost")}
        t.check("127.0.0.1" not in env["RABBITMQ_URL"] + env["POSTGRES_DSN"],
                "sluice gets no IP address, only the name localhost")
        with t.locked(q):
            s = t.sluice("--queue", q, "--until-empty", env=env, label="sluice-local")
            t.wait_until(lambda: t.copies_waiting(q) >= 1, 60,
                         "sluice's COPY (connected by name) waiting on the lock")
            ident = proc_identity(s.pid)
            t.check(ident is not None, "sluice is running while its COPY waits")
            ids, root, exe = ident
            t.eq(ids["Uid"], [str(UID)] * 4, "sluice's uids (real, effective, saved, fs)")
            t.eq(ids["Gid"], [str(UID)] * 4, "sluice's gids")
            t.eq(ids.get("Groups"), [str(UID)], "sluice's supplementary groups")
            t.eq(root, str(ROOT), "sluice's root directory")
            t.eq(exe, str(ROOT / "usr/local/bin/sluice"), "sluice's executable")
        t.eq(s.expect_exit(120), 0, "sluice exit status")
        port = urllib.parse.urlsplit(ENV["RABBITMQ_URL"]).port
        t.check(f"amqp://guest@localhost:{port}/" in s.log(), "sluice logs the broker as localhost")
        t.check_ids_md5(q, expected)
        t.check_queue_drained(q)

    with t.section("names only the root's /etc/hosts has"):
        mq, pg = "rabbitmq.hosts.sluice.test", "postgres.hosts.sluice.test"
        t.check(not host_knows(mq) and not host_knows(pg),
                f"this host's /etc/hosts has neither {mq} nor {pg}")
        with open(ROOT / "etc/hosts", "a") as f:
            f.write(f"127.0.0.1\t{mq} {pg}\n")
        ingest(t, mq, pg, 200, "hosts")

    with t.section("names only a DNS server has"):
        mq, pg = "rabbitmq.dns.sluice.test", "postgres.dns.sluice.test"
        t.check(not host_knows(mq) and not host_knows(pg),
                f"this host's /etc/hosts has neither {mq} nor {pg}")
        try:
            dns = TinyDNS([mq, pg])
        except OSError as e:
            t.fail(f"cannot serve DNS on {TinyDNS.ADDR}:53: {e}")
        try:
            ingest(t, mq, pg, 200, "dns")
        finally:
            dns.close()
        t.check(dns.seen.get(mq, 0) > 0 and dns.seen.get(pg, 0) > 0,
                "sluice asked the DNS server for both names",
                {k: v for k, v in dns.seen.items()})

    with t.section("static loadgen publishes from the root"):
        q = t.queue("loadgen")
        n, seed = 1000, 7
        t0 = time.monotonic()
        lg = subprocess.run(in_root(
            "/usr/local/bin/loadgen", "--url", by_name(ENV["RABBITMQ_URL"], "localhost"),
            "--queue", q, "--count", str(n), "--seed", str(seed), "--size", "100"),
            capture_output=True, text=True, timeout=120)
        print(f"  loadgen exited with {lg.returncode} after {time.monotonic() - t0:.1f} s")
        t.eq(lg.returncode, 0, "loadgen exit status" + (f" ({lg.stderr.strip()[-300:]})"
                                                           if lg.returncode else ""))
        t.wait_ready(q, n)
        env = {"RABBITMQ_URL": by_name(ENV["RABBITMQ_URL"], "localhost"),
               "POSTGRES_DSN": by_name(ENV["POSTGRES_DSN"], "localhost")}
        s = t.sluice("--queue", q, "--until-empty", env=env, label="sluice-loadgen")
        t.eq(s.expect_exit(120), 0, "sluice exit status (loadgen's messages)")
        ids = {r[0] for r in t.sql(f"SELECT message_id FROM {q}")}
        want = {f"{seed}-{i}" for i in range(n)}
        t.eq(t.count(q), n, f"{q}: row count")
        t.check(ids == want, f"{q}: message ids are {seed}-0 .. {seed}-{n - 1}",
                None if ids == want else
                f"missing {sorted(want - ids)[:5]}, unexpected {sorted(ids - want)[:5]}")
        t.check_queue_drained(q)


Test.main(main)
