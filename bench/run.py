#!/usr/bin/python3
"""sluice benchmark runner (`make bench`, `make bench-quick`).

    /usr/bin/python3 bench/run.py [--quick] [--only SYSTEM,...] [--scenarios a,b,...]
                                  [--runs N] [--plot] [--plot-only] [--no-deps]

Systems (bench/peers/ holds the peers):
  broker-null  rabbitmq-c consumer that discards and acks: the broker's limit
  psql-copy    `psql \\copy t FROM file (FORMAT binary)` of the rows sluice wrote:
               PostgreSQL's limit for the same rows, no broker involved
  sluice       build/sluice with its defaults
  sluice-best  build/sluice with $BENCH_SLUICE_BEST (bigger batches and prefetch)
  seed-python  pika + psycopg 3, INSERT + COMMIT + ack per message
  python-copy  pika + psycopg 3 binary COPY in batches, ack multiple after commit
  go-pgx       amqp091-go + pgx v4 CopyFrom in batches, ack multiple after commit
  node-copy    amqplib + pg + pg-copy-streams, COPY text in batches, ack multiple

Scenarios:
  a  one queue, 200-byte JSON, pre-filled (quick 50k msgs, full 1M; seed-python 5k / 30k)
  b  two queues, one consumer process per queue (sluice: --shards 1 each), CPU summed
  c  one queue, 4 KiB JSON (quick 10k, full 250k; seed-python 5k / 30k)
  d  rate-limited: loadgen publishes at half of sluice's peak from (a) while the
     consumer runs; latency = commit time of the row's transaction
     (pg_xact_commit_timestamp(xmin); tools/servers.sh turns on
     track_commit_timestamp) - x-publish-us, p50/p99 from SQL
  e  backlog (quick 500k, full 3M) drained by sluice alone, VmRSS sampled every second

Environment:
  BENCH_SCALE         multiply every message count (e.g. 0.1 to try the runner out)
  BENCH_SLUICE_BEST   extra sluice flags for sluice-best
                      [--batch-rows 5000 --prefetch 20000 --batch-bytes 32M]
  BENCH_RATE          publish rate for (d), msgs/s [half of sluice's (a) msgs/s from
                      this run, else from bench/results/latest.json]
  BENCH_IDLE_EXIT_MS  peers' IDLE_EXIT_MS [5000]: the broker can pause deliveries for over a
                      second while it pages a large backlog; the idle tail is not timed
  BENCH_PREFETCH, BENCH_BATCH, BENCH_LINGER_MS  the peers' PREFETCH [2000], BATCH
                      [1000], LINGER_MS [20]

How time is measured (the same rule for every system): from spawning the
consumer to its LAST COMMIT, not to its exit. Every consumer exits only after
an idle period (the peers' IDLE_EXIT_MS, sluice's --until-empty probes), and
that tail is not work. The peers print their last commit time (a JSON line on
stdout, written after the commit and ack); sluice runs with --log-level debug
and its last "committed N rows" line's timestamp is used (a few log lines per
batch, negligible). psql-copy is timed to its exit, which is its commit.
Process start-up (interpreter, connections) is inside the measured time.
CPU is user+sys of the consumer process(es) from os.wait4's rusage (the idle
tail costs next to nothing); peak RSS is VmHWM from /proc, sampled (summed over processes in
b). pg_cpu_s / mq_cpu_s are the PostgreSQL cluster's and RabbitMQ's CPU
during the run, read from /proc: indicative only on a shared machine.

ok means: exit status 0, rows = published, distinct message_id = published,
every published_at inside the publishing window, the queue(s) left with 0
ready messages and no consumer (so nothing unacked), and for the first K
messages (K = the smallest count in the scenario) a fingerprint of
(message_id, md5(body), headers, content_type, exchange, routing_key) equal
to the first system's of the scenario (sluice runs first).
"""
import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PEERS = BENCH / "peers"
RESULTS = BENCH / "results"
BUILD = REPO / "build"
PEER_BUILD = BUILD / "peers"
SLUICE = BUILD / "sluice"
LOADGEN = BUILD / "loadgen"
PYTHON = "/usr/bin/python3"  # Debian's, with python3-pika and python3-psycopg

SYSTEMS = ["broker-null", "psql-copy", "sluice", "sluice-best", "seed-python",
           "python-copy", "go-pgx", "node-copy"]
# Run order: sluice first, so that its table feeds psql-copy and its
# fingerprint is the reference.
RUN_ORDER = ["sluice", "psql-copy", "sluice-best", "broker-null", "go-pgx", "node-copy",
             "python-copy", "seed-python"]
SCENARIOS = ["a", "b", "c", "d", "e"]
SCENARIO_SYSTEMS = {
    "a": SYSTEMS, "b": SYSTEMS, "c": SYSTEMS,
    "d": [s for s in SYSTEMS if s not in ("broker-null", "psql-copy")],
    "e": ["sluice"],
}
SCENARIO_TITLES = {
    "a": "1 queue, 200 B JSON", "b": "2 queues, 1 process each", "c": "1 queue, 4 KiB JSON",
    "d": "rate-limited, latency", "e": "backlog, sluice RSS",
}

SIZES = {  # message counts before BENCH_SCALE
    "quick": {"a": 50_000, "b": 50_000, "c": 10_000, "e": 500_000, "seed": 5_000,
              "d_seconds": 5, "runs_ac": 1},
    "full": {"a": 1_000_000, "b": 1_000_000, "c": 250_000, "e": 3_000_000, "seed": 30_000,
             "d_seconds": 30, "runs_ac": 3},
}

ENVELOPE_COLS = ("exchange, routing_key, message_id, content_type, headers, published_at,"
                 " ingested_at, body")
ENVELOPE_DDL = ("CREATE TABLE {} (exchange text, routing_key text, message_id text,"
                " content_type text, headers jsonb, published_at timestamptz,"
                " ingested_at timestamptz NOT NULL DEFAULT now(), body bytea)")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- setup

def is_installed(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True,
                       text=True)
    return r.returncode == 0 and r.stdout.strip() == "install ok installed"


def apt_install(pkgs):
    missing = [p for p in pkgs if not is_installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"bench: missing Debian packages: {' '.join(missing)} (run as root)")
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    opts = ["-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300"]
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", *opts, *missing]):
        r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True)
        if r.returncode != 0:
            sys.exit(f"bench: {' '.join(cmd[:2])} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def ensure_deps(systems, plot):
    """What the benchmark needs beyond the project's own tools/deps.sh."""
    subprocess.run([str(REPO / "tools" / "deps.sh")], check=True)
    pkgs = ["python3-pika", "python3-psycopg", "postgresql-client-15", "librabbitmq-dev"]
    if "go-pgx" in systems:
        pkgs += ["golang-go", "golang-github-rabbitmq-amqp091-go-dev",
                 "golang-github-jackc-pgx-v4-dev"]
    if plot:
        pkgs.append("gnuplot-nox")
    if "node-copy" in systems and not shutil.which("node"):
        pkgs += ["nodejs", "npm"]
    apt_install(pkgs)
    if "node-copy" in systems:
        node_dir = PEERS / "node_copy"
        stamp = node_dir / "node_modules" / ".package-lock.json"
        lock = node_dir / "package-lock.json"
        if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
            log("npm ci in bench/peers/node_copy")
            r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=node_dir,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"bench: npm ci failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def stale(target, *sources):
    return not target.exists() or any(s.stat().st_mtime > target.stat().st_mtime
                                      for s in sources)


def build(systems):
    if not SLUICE.exists() or not LOADGEN.exists():
        log("make (build/sluice, build/loadgen)")
        subprocess.run(["make", "-C", str(REPO), "all"], check=True)
    PEER_BUILD.mkdir(parents=True, exist_ok=True)
    if "broker-null" in systems:
        src = PEERS / "broker_null.c"
        out = PEER_BUILD / "broker_null"
        if stale(out, src):
            log("cc bench/peers/broker_null.c")
            subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(out), str(src),
                            "-lrabbitmq"], check=True)
    if "go-pgx" in systems:
        src = PEERS / "go_pgx" / "main.go"
        out = PEER_BUILD / "go_pgx"
        if stale(out, src):
            log("go build bench/peers/go_pgx (GOPATH mode, Debian's Go packages)")
            env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode",
                       GOCACHE=str(PEER_BUILD / ".gocache"), GOFLAGS="")
            subprocess.run(["go", "build", "-o", str(out), "./bench/peers/go_pgx"],
                           cwd=REPO, env=env, check=True)


def server_env():
    servers = REPO / "tools" / "servers.sh"
    subprocess.run([str(servers), "start"], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([str(servers), "env"], check=True, capture_output=True,
                         text=True).stdout
    env = {}
    for line in out.splitlines():
        parts = shlex.split(line)
        if len(parts) == 2 and parts[0] == "export" and "=" in parts[1]:
            k, v = parts[1].split("=", 1)
            env[k] = v
    for k in ("RABBITMQ_URL", "POSTGRES_DSN"):
        if k not in env:
            sys.exit(f"bench: tools/servers.sh env did not give {k}")
    return env


# ---------------------------------------------------------------- servers' CPU

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), [int(x) for x in fields[11:15]]  # ppid, utime stime cutime cstime
    except (OSError, IndexError, ValueError):
        return None, None


def _pidfile(path):
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def server_cpu():
    """(PostgreSQL cluster CPU s, RabbitMQ CPU s) so far, or None each."""
    pg = None
    pm = _pidfile(REPO / ".local" / "pg" / "data" / "postmaster.pid")
    if pm:
        _, t = _stat(pm)
        if t:
            ticks = sum(t)  # its own time + reaped backends'
            for d in os.listdir("/proc"):
                if d.isdigit():
                    ppid, c = _stat(d)
                    if ppid == pm and c:
                        ticks += c[0] + c[1]
            pg = ticks / CLK_TCK
    mq = None
    rp = _pidfile(REPO / ".local" / "rabbitmq" / "rabbitmq.pid")
    if rp:
        _, t = _stat(rp)
        if t:
            mq = sum(t) / CLK_TCK
    return pg, mq


# ---------------------------------------------------------------- broker, database

class Env:
    def __init__(self, srv, tmp):
        import pika
        import psycopg
        self.pika = pika
        self.srv = srv
        self.url = srv["RABBITMQ_URL"]
        self.dsn = srv["POSTGRES_DSN"]
        self.tmp = Path(tmp)
        self.db = psycopg.connect(self.dsn, autocommit=True)
        self.sql = psycopg.sql
        # latency_ms needs it; say so before a long run, not in its scenario d.
        if self.q("SHOW track_commit_timestamp")[0][0] != "on":
            sys.exit("bench: PostgreSQL's track_commit_timestamp is off (a server started"
                     " by an older tools/servers.sh): run tools/servers.sh stop, then start")

    def consumer_env(self):
        """The environment of a consumer under test: the servers', and no
        SLUICE_* option from the caller's (sluice means its defaults; the
        servers' own SLUICE_* ports come back with srv)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(self.srv)
        env.pop("PYTHONPATH", None)
        return env

    def q(self, query, params=None):
        with self.db.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else None

    def ident(self, name):
        return self.sql.Identifier(name)

    def drop(self, table):
        self.q(self.sql.SQL("DROP TABLE IF EXISTS {}").format(self.ident(table)))

    def create(self, table):
        self.drop(table)
        self.q(self.sql.SQL(ENVELOPE_DDL).format(self.ident(table)))

    def latency_ms(self, table, since_us):
        """Publish -> commit of the rows published at or after since_us:
        (count, p50, p99, max) in ms. The commit time is PostgreSQL's own
        (pg_xact_commit_timestamp of the row's xmin), the same for every
        system; x-publish-us is loadgen's --timestamp-us header."""
        n, pct, top = self.q(self.sql.SQL(
            "SELECT count(*), percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY l),"
            " max(l) FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000"
            " - (headers->>'x-publish-us')::float8 / 1000 AS l FROM {}"
            " WHERE (headers->>'x-publish-us')::bigint >= %s) s").format(self.ident(table)),
            (since_us,))[0]
        return (n, None, None, None) if not n else (n, pct[0], pct[1], top)

    def amqp(self):
        return self.pika.BlockingConnection(self.pika.URLParameters(self.url))

    def declare(self, queues):
        with self.amqp() as conn:
            ch = conn.channel()
            for q in queues:
                ch.queue_declare(q, durable=True)
                ch.queue_purge(q)

    def depth(self, queues):
        """{queue: (ready messages, consumers)}"""
        out = {}
        with self.amqp() as conn:
            ch = conn.channel()
            for q in queues:
                m = ch.queue_declare(q, passive=True).method
                out[q] = (m.message_count, m.consumer_count)
        return out

    def wait_for_messages(self, queues, loadgen, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.amqp() as conn:
            ch = conn.channel()
            while time.monotonic() < deadline and loadgen.poll() is None:
                if any(ch.queue_declare(q, passive=True).method.message_count for q in queues):
                    return
                time.sleep(0.005)

    def loadgen_args(self, queues, count, size, extra=()):
        return [str(LOADGEN), "--url", self.url, "--queue", ",".join(queues), "--declare",
                "--purge", "--count", str(count), "--size", str(size), "--shape", "json",
                "--connections", "2", "--json", *extra]

    def fill(self, queues, count, size):
        t0 = time.time()
        # A wider confirm window than loadgen's default: pre-filling is most
        # of a quick run's time, and it is not what is measured.
        r = subprocess.run(self.loadgen_args(queues, count, size, ["--confirm-window", "5000"]),
                           capture_output=True,
                           text=True, stdin=subprocess.DEVNULL)
        t1 = time.time()
        res = parse_last_json(r.stdout)
        if r.returncode != 0 or not res or res.get("confirmed") != count:
            raise RuntimeError(f"loadgen failed (rc {r.returncode}): {r.stderr[-1500:]}")
        return res, t0, t1


def parse_last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------- processes

class Proc:
    def __init__(self, name, argv, env, logdir):
        self.name = name
        self.argv = argv
        self.out_path = logdir / f"{name}.out"
        self.err_path = logdir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.spawn = time.time()
            self.p = subprocess.Popen(argv, env=env, stdout=out, stderr=err,
                                      stdin=subprocess.DEVNULL, cwd=REPO,
                                      start_new_session=True)
        self.pid = self.p.pid
        self.exit = None
        self.rc = None
        self.ru = None
        self.timed_out = False
        self.hwm_kb = 0

    def stdout(self):
        return self.out_path.read_text(errors="replace")

    def stderr(self):
        return self.err_path.read_text(errors="replace")

    def kill(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_all(procs, timeout, rss_every=None):
    """Reap every process with os.wait4 (for its rusage); follow each live
    one's VmHWM (peak RSS) every 10 ms and sample its VmRSS every rss_every
    seconds. Returns {name: [(t, kB), ...]}.

    Why VmHWM and not ru_maxrss: Linux carries a process's maxrss across fork
    and exec, so a child's ru_maxrss is never below this runner's own peak
    RSS (tens of MiB with pika and psycopg loaded). VmHWM belongs to the
    exec'd program's own address space. It is read until the process exits,
    so only growth in its last 10 ms could be missed."""
    pending = {p.pid: p for p in procs}
    samples = {p.name: [] for p in procs}
    deadline = time.monotonic() + timeout
    next_sample = time.monotonic()
    t0 = time.time()
    try:
        _reap(pending, samples, deadline, next_sample, t0, rss_every)
    except BaseException:
        for p in pending.values():
            p.kill()
        raise
    return samples


def _reap(pending, samples, deadline, next_sample, t0, rss_every):
    while pending:
        for pid, p in list(pending.items()):
            wpid, status, ru = os.wait4(pid, os.WNOHANG)
            if wpid:
                p.exit = time.time()
                p.rc = os.waitstatus_to_exitcode(status)
                p.p.returncode = p.rc  # reaped here; Popen must not wait again
                p.ru = ru
                del pending[pid]
        sample = rss_every and time.monotonic() >= next_sample
        for p in pending.values():
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            p.hwm_kb = max(p.hwm_kb, int(line.split()[1]))
                        elif sample and line.startswith("VmRSS:"):
                            samples[p.name].append((round(time.time() - t0, 1),
                                                    int(line.split()[1])))
            except (OSError, ValueError):
                pass
        if sample:
            next_sample += rss_every
        if pending and time.monotonic() > deadline:
            for p in pending.values():
                p.timed_out = True
                p.kill()
            deadline = float("inf")
        time.sleep(0.01)


SLUICE_LOG = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z debug \[[^\]]*\] committed (\d+) rows")


SLUICE_CONSUMING = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z info \[[^\]]*\] consuming queue")


def _log_time(stamp):
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=dt.timezone.utc).timestamp()


def finish_time(system, proc):
    """(unix time of the last commit, rows the process says it committed,
    unix time it was ready: first message for the peers, sluice's first
    "consuming queue" line)."""
    if system in ("sluice", "sluice-best"):
        last, rows, ready = None, 0, None
        for line in proc.stderr().splitlines():
            m = SLUICE_LOG.match(line)
            if m:
                last = _log_time(m.group(1))
                rows += int(m.group(2))
            elif ready is None:
                m = SLUICE_CONSUMING.match(line)
                if m:
                    ready = _log_time(m.group(1))
        return (last if last else proc.exit), (rows if last else None), ready
    if system == "psql-copy":
        return proc.exit, None, None
    res = parse_last_json(proc.stdout())
    if res and res.get("last_commit_unix"):
        return res["last_commit_unix"], res.get("msgs"), res.get("first_msg_unix") or None
    return proc.exit, None, None


# ---------------------------------------------------------------- systems

class Bench:
    def __init__(self, args, env, mode, scale):
        self.args = args
        self.env = env
        self.mode = mode
        self.scale = scale
        self.sizes = SIZES[mode]
        self.records = []
        self.fingerprints = {}
        self.psql_files = {}
        self.psql_rows = {}
        self.want_psql = "psql-copy" in (args.only.split(",") if args.only else SYSTEMS)
        self.started = dt.datetime.now().strftime("%Y-%m-%dT%H%M%S")
        self.commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                     capture_output=True, text=True).stdout.strip() or None
        self.sluice_best = shlex.split(os.environ.get(
            "BENCH_SLUICE_BEST", "--batch-rows 5000 --prefetch 20000 --batch-bytes 32M"))
        self.peer_env = {
            "PREFETCH": os.environ.get("BENCH_PREFETCH", "2000"),
            "BATCH": os.environ.get("BENCH_BATCH", "1000"),
            "LINGER_MS": os.environ.get("BENCH_LINGER_MS", "20"),
            "IDLE_EXIT_MS": os.environ.get("BENCH_IDLE_EXIT_MS", "5000"),
        }

    def count(self, key):
        return max(100, int(self.sizes[key] * self.scale))

    def commands(self, system, queue, table, shards):
        """argv and environment of one consumer process for one queue."""
        env = self.env.consumer_env()
        if system in ("sluice", "sluice-best"):
            argv = [str(SLUICE), "--until-empty", "--stats-interval", "0", "--log-level", "debug"]
            if shards:
                argv += ["--shards", str(shards)]
            if system == "sluice-best":
                argv += self.sluice_best
            env.update(SLUICE_QUEUE=queue, SLUICE_TABLE=table)
            return argv, env
        env.update(self.peer_env, QUEUE=queue, TABLE=table)
        argv = {
            "broker-null": [str(PEER_BUILD / "broker_null")],
            "seed-python": [PYTHON, str(PEERS / "seed_python.py")],
            "python-copy": [PYTHON, str(PEERS / "python_copy.py")],
            "go-pgx": [str(PEER_BUILD / "go_pgx")],
            "node-copy": ["node", str(PEERS / "node_copy" / "main.js")],
        }[system]
        return argv, env

    # -- one run -----------------------------------------------------------

    def run_once(self, scen, system, msgs, size, queues, logdir, rate=None, ref_k=None):
        E = self.env
        table = f"bench_{scen}_{system.replace('-', '_')}"
        run = {"msgs": msgs}
        loadgen = None
        window = None
        if system == "psql-copy":
            files = self.psql_files.get(scen)
            if not files:
                raise RuntimeError("no rows rendered from a sluice load (sluice failed?)")
            E.create(table)
            cpu0 = server_cpu()
            procs = [Proc(f"{system}-{i}", ["psql", E.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                            "-c", f"\\copy {table} ({ENVELOPE_COLS}) FROM "
                                                  f"'{f}' (FORMAT binary)"],
                          self.env.consumer_env(), logdir) for i, f in enumerate(files)]
            msgs = run["msgs"] = self.psql_rows[scen]
        else:
            E.drop(table)
            if system not in ("sluice", "sluice-best") or len(queues) > 1:
                E.create(table)  # sluice creates its own, but two must not race
            if rate is None:
                res, t0, t1 = E.fill(queues, msgs, size)
                window = (t0, t1)
            else:
                E.declare(queues)
                t0 = time.time()
                loadgen = subprocess.Popen(
                    E.loadgen_args(queues, msgs, size, ["--rate", str(rate), "--timestamp-us"]),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    stdin=subprocess.DEVNULL)
                E.wait_for_messages(queues, loadgen)
            shards = 1 if len(queues) > 1 else 0
            cpu0 = server_cpu()
            procs = []
            for i, q in enumerate(queues):
                argv, env = self.commands(system, q, table, shards)
                procs.append(Proc(f"{system}-{i}", argv, env, logdir))
        timeout = 120 + msgs / 300
        try:
            samples = wait_all(procs, timeout, rss_every=1.0 if scen == "e" else None)
        finally:
            if loadgen and loadgen.poll() is None and sys.exc_info()[0]:
                loadgen.kill()
        cpu1 = server_cpu()
        if loadgen:
            out, err = loadgen.communicate(timeout=timeout)
            t1 = time.time()
            window = (t0, t1)
            res = parse_last_json(out)
            if loadgen.returncode != 0 or not res or res.get("confirmed") != msgs:
                raise RuntimeError(f"loadgen failed (rc {loadgen.returncode}): {err[-1500:]}")
            run["publish_msgs_per_s"] = res.get("msgs_per_sec")

        spawn = min(p.spawn for p in procs)
        ends = [finish_time(system, p) for p in procs]
        run["seconds"] = round(max(e[0] for e in ends) - spawn, 4)
        run["exit_seconds"] = round(max(p.exit for p in procs) - spawn, 4)
        if all(e[2] for e in ends):  # start-up: spawn to ready (informative)
            run["startup_s"] = round(max(e[2] for e in ends) - spawn, 4)
        run["cpu_s"] = round(sum(p.ru.ru_utime + p.ru.ru_stime for p in procs), 4)
        run["peak_rss_kb"] = sum(p.hwm_kb for p in procs)
        if cpu0[0] is not None and cpu1[0] is not None:
            run["pg_cpu_s"] = round(cpu1[0] - cpu0[0], 3)
        if cpu0[1] is not None and cpu1[1] is not None:
            run["mq_cpu_s"] = round(cpu1[1] - cpu0[1], 3)
        if scen == "e":
            s = samples[procs[0].name]
            run["rss_samples_kb"] = [kb for _, kb in s]
        problems = []
        for p in procs:
            if p.timed_out:
                problems.append(f"{p.name} timed out after {timeout:.0f}s")
            elif p.rc != 0:
                problems.append(f"{p.name} exit {p.rc}: {p.stderr()[-800:].strip()}")
        said = [e[1] for e in ends]
        if all(s is not None for s in said):
            run["reported_msgs"] = sum(said)

        # -- verification
        writes = system != "broker-null"
        if writes:
            count, distinct = E.q(self.sql(
                "SELECT count(*), count(DISTINCT message_id) FROM {}", table))[0]
            run["rows"] = count
            if count != msgs or distinct != msgs:
                problems.append(f"rows {count}, distinct message_id {distinct}, expected {msgs}")
        elif run.get("reported_msgs") != msgs:
            problems.append(f"consumed {run.get('reported_msgs')}, expected {msgs}")
        if window and writes:
            bad = E.q(self.sql("SELECT count(*) FROM {} WHERE published_at IS NULL OR"
                               " published_at < to_timestamp(%s) OR published_at > to_timestamp(%s)",
                               table), (int(window[0]), int(window[1]) + 1))[0][0]
            if bad:
                problems.append(f"{bad} rows with published_at missing or outside the publish window")
        if window:
            depth = E.depth(queues)
            if any(r or c for r, c in depth.values()):
                problems.append(f"queue(s) not drained: {depth}")
        if ref_k and writes:
            # Every column but the timestamps (and the x-publish-us header),
            # over the first ref_k messages (compared with the scenario's first
            # system, whatever its count) and over all of them (compared with
            # the first system that had as many messages).
            row = ("message_id || ':' || md5(body) || ':' || coalesce((headers - 'x-publish-us')"
                   "::text, '-') || ':' || coalesce(content_type, '-') || ':' || exchange"
                   " || ':' || routing_key")
            fp_k, fp_all = E.q(self.sql(
                f"SELECT md5(string_agg({row}, ',' ORDER BY message_id) FILTER"
                f" (WHERE (headers->>'seq')::bigint < %s)),"
                f" md5(string_agg({row}, ',' ORDER BY message_id)) FROM {{}}", table),
                (ref_k,))[0]
            for key, fp, what in (((scen, "k"), fp_k, f"first {ref_k} rows"),
                                  ((scen, msgs), fp_all, "rows")):
                ref = self.fingerprints.setdefault(key, (system, fp))
                if key[1] == "k":
                    run["same_rows_as"] = ref[0]
                if fp != ref[1]:
                    problems.append(f"{what} differ from {ref[0]}'s: {fp} vs {ref[1]}")
        if scen == "d":
            # Leave out the messages published while the consumer was starting
            # and for a settling time after it was ready (at most 1 s, at most
            # a fifth of the publishing): that backlog is start-up, not latency.
            # (In runs too short for that, fall back to every message.)
            warm = run.get("startup_s", 0) + min(1.0, 0.2 * msgs / rate)
            for since in (int((spawn + warm) * 1e6), 0):
                lat = E.latency_ms(table, since)
                if lat[0]:
                    break
            run["rate"] = rate
            run["latency_samples"] = lat[0]
            if lat[0]:
                run["latency_p50_ms"] = round(lat[1], 3)
                run["latency_p99_ms"] = round(lat[2], 3)
                run["latency_max_ms"] = round(lat[3], 3)
        run["ok"] = not problems
        if problems:
            run["problems"] = problems
            log(f"  {system}: NOT OK: {'; '.join(problems)[:1500]} (logs: {logdir})")

        if system == "sluice" and self.want_psql:
            self.render_for_psql(scen, table, queues)
        E.drop(table)
        return run

    def sql(self, text, table):
        return self.env.sql.SQL(text).format(self.env.ident(table))

    def render_for_psql(self, scen, table, queues):
        files = []
        for i, q in enumerate(queues):
            f = self.env.tmp / f"{scen}-{i}.copy"
            literal = "'" + q.replace("'", "''") + "'"
            subprocess.run(["psql", self.env.dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                            f"\\copy (SELECT {ENVELOPE_COLS} FROM {table} WHERE routing_key ="
                            f" {literal}) TO '{f}' (FORMAT binary)"],
                           check=True, env=self.env.consumer_env())
            files.append(f)
        self.psql_files[scen] = files
        self.psql_rows[scen] = self.env.q(self.sql("SELECT count(*) FROM {}", table))[0][0]

    # -- scenarios ---------------------------------------------------------

    def scenario(self, scen, systems):
        todo = [s for s in RUN_ORDER if s in systems and s in SCENARIO_SYSTEMS[scen]]
        if not todo:
            return
        log(f"scenario {scen}: {SCENARIO_TITLES[scen]}: {', '.join(todo)}")
        size = 4096 if scen == "c" else 200
        queues = [f"bench_{scen}_1", f"bench_{scen}_2"] if scen == "b" else [f"bench_{scen}"]
        runs = self.args.runs or (self.sizes["runs_ac"] if scen in ("a", "c") else 1)
        rate = None
        if scen == "d":
            rate = self.rate_for_d()
            if not rate:
                log("scenario d: no rate (run scenario a with sluice, or set BENCH_RATE): skipped")
                return
        if scen == "d":
            n_main = max(100, int(rate * self.sizes["d_seconds"] * self.scale))
        elif scen == "e":
            n_main = self.count("e")
        else:
            n_main = self.count(scen)
        n_seed = min(n_main, self.count("seed"))
        ref_k = None if scen == "e" else (n_seed if "seed-python" in todo else n_main)
        if "psql-copy" in todo and "sluice" not in todo:
            # Rows for psql-copy come from a sluice load, untimed.
            log("  (sluice load to render psql-copy's rows, not recorded)")
            self.run_once(scen, "sluice", n_main, size, queues, self.logdir(scen, "sluice-prep"),
                          ref_k=ref_k)
        for system in todo:
            msgs = n_seed if system == "seed-python" else n_main
            results = []
            for i in range(runs):
                try:
                    r = self.run_once(scen, system, msgs, size, queues,
                                      self.logdir(scen, f"{system}-{i}"), rate=rate, ref_k=ref_k)
                except Exception as e:  # one broken system must not stop the others
                    log(f"  {system}: FAILED: {e}")
                    r = {"msgs": msgs, "ok": False, "problems": [str(e)]}
                results.append(r)
                if "seconds" in r:
                    log(f"  {system} run {i + 1}/{runs}: {r['msgs']} msgs in {r['seconds']:.3f}s"
                        f" = {r['msgs'] / r['seconds']:,.0f}/s, cpu {r['cpu_s']:.2f}s,"
                        f" rss {r['peak_rss_kb'] / 1024:.1f} MiB, ok={r['ok']}"
                        + (f", latency p50 {r.get('latency_p50_ms')} ms p99"
                           f" {r.get('latency_p99_ms')} ms" if scen == "d" else ""))
            self.records.append(self.summarize(scen, system, results, len(queues)))

    def logdir(self, scen, name):
        d = self.env.tmp / "logs" / scen / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def rate_for_d(self):
        if os.environ.get("BENCH_RATE"):
            return float(os.environ["BENCH_RATE"])
        peak = None
        for r in self.records:
            if r["scenario"] == "a" and r["system"] == "sluice" and r.get("msgs_per_s"):
                peak = r["msgs_per_s"]
        if peak is None:
            try:
                for r in json.loads((RESULTS / "latest.json").read_text()):
                    if r["scenario"] == "a" and r["system"] == "sluice" and r.get("msgs_per_s"):
                        peak = r["msgs_per_s"]
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return round(peak / 2) if peak else None

    def summarize(self, scen, system, runs, processes):
        rec = {"scenario": scen, "system": system, "msgs": runs[0]["msgs"],
               "processes": processes, "mode": self.mode, "scale": self.scale,
               "started": self.started, "commit": self.commit}
        good = [r for r in runs if "seconds" in r]

        def med(key):
            vals = [r[key] for r in good if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        secs = med("seconds")
        rec["seconds"] = secs
        rec["msgs_per_s"] = round(rec["msgs"] / secs, 1) if secs else None
        cpu = med("cpu_s")
        rec["cpu_s"] = cpu
        rec["cpu_us_per_msg"] = round(cpu / rec["msgs"] * 1e6, 2) if cpu is not None else None
        rss = med("peak_rss_kb")
        rec["peak_rss_kb"] = int(rss) if rss is not None else None
        for key in ("pg_cpu_s", "mq_cpu_s", "latency_p50_ms", "latency_p99_ms",
                    "latency_max_ms", "rate"):
            v = med(key)
            if v is not None:
                rec[key] = round(v, 3)
        rec["ok"] = bool(runs) and all(r.get("ok") for r in runs)
        if system == "sluice-best":
            rec["params"] = " ".join(self.sluice_best)
        elif system not in ("sluice", "psql-copy"):
            rec["params"] = " ".join(f"{k}={v}" for k, v in self.peer_env.items())
        rec["runs"] = runs
        return rec


# ---------------------------------------------------------------- output

def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(records):
    head = (f"{'sc':<3}{'system':<13}{'msgs':>9}{'seconds':>9}{'msgs/s':>10}{'cpu s':>8}"
            f"{'µs/msg':>9}{'rss MiB':>9}{'pg cpu':>8}  {'ok':<4}{'p50/p99 ms':>14}")
    print(head)
    print("-" * len(head))
    for r in records:
        lat = ""
        if r.get("latency_p50_ms") is not None:
            lat = f"{r['latency_p50_ms']:.1f}/{r['latency_p99_ms']:.1f}"
        rss = r["peak_rss_kb"] / 1024 if r.get("peak_rss_kb") else None
        print(f"{r['scenario']:<3}{r['system']:<13}{r['msgs']:>9}{fmt(r['seconds'], '.3f'):>9}"
              f"{fmt(r['msgs_per_s'], ',.0f'):>10}{fmt(r['cpu_s'], '.2f'):>8}"
              f"{fmt(r['cpu_us_per_msg'], '.1f'):>9}{fmt(rss, '.1f'):>9}"
              f"{fmt(r.get('pg_cpu_s'), '.2f'):>8}  {('yes' if r['ok'] else 'NO'):<4}{lat:>14}")
    for r in records:
        if r["scenario"] == "e" and r["runs"] and r["runs"][0].get("rss_samples_kb"):
            s = r["runs"][0]["rss_samples_kb"]
            print(f"e: sluice VmRSS samples (MiB, 1/s): "
                  f"{' '.join(f'{kb / 1024:.1f}' for kb in s[:60])}")


SCENARIO_TITLES = {
    "a": "a: one queue, 200-byte JSON",
    "b": "b: two queues, one consumer process per queue",
    "c": "c: one queue, 4 KiB JSON",
    "d": "d: rate-limited to half of sluice's peak",
    "e": "e: backlog drained by sluice (memory)",
}


def markdown(records):
    """PERF.md's tables: per scenario, each figure beside its ratio to sluice
    and msgs/s beside its ratio to the broker's limit (broker-null)."""
    out = []
    for scen in sorted({r["scenario"] for r in records}):
        rows = [r for r in records if r["scenario"] == scen]
        base = next((r for r in rows if r["system"] == "sluice"), None)
        limit = next((r for r in rows if r["system"] == "broker-null"), None)

        def ratio(r, ref, key):
            if not ref or not r.get(key) or not ref.get(key):
                return "–"
            return f"{r[key] / ref[key]:.2f}"

        lat = any(r.get("latency_p50_ms") is not None for r in rows)
        out.append(f"#### {SCENARIO_TITLES.get(scen, scen)}\n")
        out.append("| system | msgs | msgs/s | × sluice | × broker-null | CPU µs/msg | × sluice "
                   "| peak RSS MiB | ok |" + (" latency p50/p99 ms |" if lat else ""))
        out.append("|---|--:|--:|--:|--:|--:|--:|--:|---|" + ("--:|" if lat else ""))
        for r in rows:
            rss = f"{r['peak_rss_kb'] / 1024:.1f}" if r.get("peak_rss_kb") else "–"
            line = (f"| {r['system']} | {r['msgs']} | {fmt(r['msgs_per_s'], ',.0f')} "
                    f"| {ratio(r, base, 'msgs_per_s')} | {ratio(r, limit, 'msgs_per_s')} "
                    f"| {fmt(r['cpu_us_per_msg'], '.1f')} | {ratio(r, base, 'cpu_us_per_msg')} "
                    f"| {rss} | {'yes' if r['ok'] else 'NO'} |")
            if lat:
                p50, p99 = r.get("latency_p50_ms"), r.get("latency_p99_ms")
                line += f" {fmt(p50, '.1f')}/{fmt(p99, '.1f')} |" if p50 is not None else " – |"
            out.append(line)
        out.append("")
    return "\n".join(out)


def write_results(records, started):
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(records, indent=1) + "\n"
    (RESULTS / f"{started}.json").write_text(text)
    (RESULTS / "latest.json").write_text(text)
    (RESULTS / "latest.md").write_text(markdown(records))
    log(f"wrote bench/results/latest.json, latest.md and {started}.json")


def plot(path_json=RESULTS / "latest.json", out=RESULTS / "latest.png"):
    records = [r for r in json.loads(Path(path_json).read_text())
               if r["scenario"] == "a" and r.get("msgs_per_s")]
    if not records:
        log("plot: no scenario a results in latest.json")
        return
    records.sort(key=lambda r: SYSTEMS.index(r["system"]) if r["system"] in SYSTEMS else 99)
    with tempfile.TemporaryDirectory() as tmp:
        dat = Path(tmp) / "a.dat"
        dat.write_text("".join(f"\"{r['system']}\" {r['msgs_per_s']} {r['cpu_us_per_msg']}\n"
                               for r in records))
        info = f"{records[0]['mode']} run {records[0]['started']}, scale {records[0]['scale']}"
        script = f"""
set terminal pngcairo size 1200,520 font ",10"
set output "{out}"
set multiplot layout 1,2 title "sluice bench, scenario a: one queue, 200-byte JSON ({info})"
set style fill solid 0.8 border -1
set boxwidth 0.7
set grid ytics
set bmargin 6
set rmargin 5
set xtics rotate by -30 nomirror
set logscale y
set yrange [*:*]
set title "throughput (msgs/s, log scale; higher is better)"
plot "{dat}" using 0:2:xtic(1) with boxes lc rgb "#3b7dd8" notitle, \\
     "" using 0:2:(sprintf("%.0f", $2)) with labels offset 0,0.8 notitle
set title "client CPU per message (µs, log scale; lower is better)"
plot "{dat}" using 0:3:xtic(1) with boxes lc rgb "#d8783b" notitle, \\
     "" using 0:3:(sprintf("%.1f", $3)) with labels offset 0,0.8 notitle
unset multiplot
"""
        r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
        if r.returncode != 0:
            sys.exit(f"bench: gnuplot failed: {r.stderr}")
    log(f"wrote {out.relative_to(REPO)}")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, 1 run each (< 5 min)")
    ap.add_argument("--only", help="comma-separated systems: " + ",".join(SYSTEMS))
    ap.add_argument("--scenarios", default="a,b,c,d,e", help="comma-separated, from a,b,c,d,e")
    ap.add_argument("--runs", type=int, help="runs per (scenario, system); default 3 for a/c"
                    " in full mode, else 1")
    ap.add_argument("--plot", action="store_true", help="also write bench/results/latest.png")
    ap.add_argument("--plot-only", action="store_true", help="only plot latest.json")
    ap.add_argument("--no-deps", action="store_true", help="skip the package checks")
    ap.add_argument("--report", action="store_true",
                    help="print latest.json as PERF.md's markdown tables")
    args = ap.parse_args()

    if args.report:
        print(markdown(json.loads((RESULTS / "latest.json").read_text())))
        return
    if args.plot_only:
        if not args.no_deps:
            apt_install(["gnuplot-nox"])
        plot()
        return
    systems = SYSTEMS if not args.only else args.only.split(",")
    scenarios = args.scenarios.split(",")
    for s in systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s}; known: {','.join(SYSTEMS)}")
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}; known: {','.join(SCENARIOS)}")
    scale = float(os.environ.get("BENCH_SCALE", "1"))
    mode = "quick" if args.quick else "full"

    if not args.no_deps:
        ensure_deps(systems, args.plot)
    build(systems)
    srv = server_env()
    t_start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    bench = Bench(args, Env(srv, tmp), mode, scale)
    log(f"{mode} mode, scale {scale}, systems {','.join(systems)},"
        f" scenarios {','.join(scenarios)}; logs in {tmp}")
    try:
        for scen in scenarios:
            t_scen = time.monotonic()
            bench.scenario(scen, systems)
            log(f"scenario {scen}: {time.monotonic() - t_scen:.0f}s")
    except KeyboardInterrupt:
        log("interrupted; writing what ran")
    finally:
        for scen in scenarios:  # leave the broker tidy
            qs = [f"bench_{scen}_1", f"bench_{scen}_2"] if scen == "b" else [f"bench_{scen}"]
            try:
                with bench.env.amqp() as conn:
                    ch = conn.channel()
                    for q in qs:
                        ch.queue_delete(q)
            except Exception:
                pass
        for f in Path(tmp).glob("*.copy"):  # psql-copy's rendered rows
            f.unlink()
    if bench.records:
        write_results(bench.records, bench.started)
        print()
        print_table(bench.records)
    ok = bool(bench.records) and all(r["ok"] for r in bench.records)
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        log(f"some runs are not ok: logs kept in {tmp}")
    log(f"done in {time.monotonic() - t_start:.0f}s")
    if args.plot and bench.records:
        plot()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
