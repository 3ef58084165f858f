#!/usr/bin/python3
"""Before/after for one change to sluice: two builds, interleaved, same queue.

    /usr/bin/python3 bench/ab.py OLD_BIN NEW_BIN [--rounds N] [--msgs N]
                                 [--shards N] [--rate R --seconds S]

Drain mode (default): pre-fill --msgs 200-byte JSON events, then each build
drains them with --until-empty. Rate mode (--rate): each build consumes while
loadgen publishes at R msgs/s for S seconds; latency = publish -> commit,
p50/p99 (bench/run.py's Env.latency_ms). Rounds alternate which build goes
first. Reported per build, the median over rounds of: CPU µs per message (user+sys from rusage),
voluntary context switches per 1000 messages (the shard's wake-ups, mostly),
and in rate mode the latency. Throughput is left to bench/run.py: with one
queue it is the broker's, not sluice's.
Servers: tools/servers.sh (started if needed), as for bench/run.py."""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: servers, loadgen, the envelope table)

QUEUE = TABLE = "bench_ab"


def consume(env, binary, args, until_empty):
    """Start sluice; returns the Popen."""
    argv = [binary, "--queue", QUEUE, "--table", TABLE, "--stats-interval", "0", *args]
    if until_empty:
        argv.append("--until-empty")
    return subprocess.Popen(argv, env=env.consumer_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def reap(proc):
    """(exit status, user+sys seconds, voluntary context switches)."""
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, ru.ru_utime + ru.ru_stime, ru.ru_nvcsw


def one(env, binary, opts):
    env.create(TABLE)
    shards = ["--shards", str(opts.shards)]
    if not opts.rate:
        env.fill([QUEUE], opts.msgs, 200)
        rc, cpu, csw = reap(consume(env, binary, shards, until_empty=True))
        n, lat = opts.msgs, None
    else:
        env.declare([QUEUE])
        proc = consume(env, binary, shards, until_empty=False)
        n = int(opts.rate * opts.seconds)
        since = int(time.time() * 1e6)
        gen = subprocess.run(env.loadgen_args([QUEUE], n, 200, ["--rate", str(opts.rate),
                                                                "--timestamp-us"]),
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if gen.returncode != 0:
            sys.exit(f"ab: loadgen failed: {gen.stderr[-800:]}")
        deadline = time.monotonic() + 60
        while env.q(env.sql.SQL("SELECT count(*) FROM {}").format(env.ident(TABLE)))[0][0] < n:
            if time.monotonic() > deadline:
                sys.exit(f"ab: {binary} did not load {n} rows within 60 s")
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        rc, cpu, csw = reap(proc)
        lat = env.latency_ms(TABLE, since)[1:3]
    rows = env.q(env.sql.SQL("SELECT count(DISTINCT message_id) FROM {}").format(
        env.ident(TABLE)))[0][0]
    if rc != 0 or rows != n:
        sys.exit(f"ab: {binary}: exit {rc}, {rows} of {n} messages in the table")
    return {"cpu_us": cpu * 1e6 / n, "csw_k": csw * 1000 / n, "lat": lat}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--msgs", type=int, default=300_000)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--rate", type=float, help="rate mode: publish at R msgs/s meanwhile")
    ap.add_argument("--seconds", type=float, default=20)
    opts = ap.parse_args()
    bins = {"old": opts.old, "new": opts.new}
    got = {k: [] for k in bins}
    with tempfile.TemporaryDirectory() as tmp:
        env = run.Env(run.server_env(), tmp)
        for r in range(opts.rounds):
            for k in (("old", "new") if r % 2 == 0 else ("new", "old")):
                res = one(env, bins[k], opts)
                got[k].append(res)
                lat = f", latency p50/p99 {res['lat'][0]:.1f}/{res['lat'][1]:.1f} ms" \
                    if res["lat"] else ""
                print(f"round {r + 1} {k}: {res['cpu_us']:.2f} µs/msg, "
                      f"{res['csw_k']:.0f} wake-ups per 1000 msgs{lat}", flush=True)
    mode = (f"rate {opts.rate:g}/s for {opts.seconds:g} s" if opts.rate
            else f"drain of {opts.msgs}")
    print(f"\nmedians over {opts.rounds} rounds ({mode}, --shards {opts.shards}):")
    print("| build | CPU µs/msg | wake-ups per 1000 msgs | latency p50/p99 ms |")
    print("|---|--:|--:|--:|")
    for k, b in bins.items():
        med = lambda f: statistics.median(f(x) for x in got[k])  # noqa: E731
        lat = (f"{med(lambda x: x['lat'][0]):.1f}/{med(lambda x: x['lat'][1]):.1f}"
               if opts.rate else "–")
        print(f"| {k} ({b}) | {med(lambda x: x['cpu_us']):.2f} | "
              f"{med(lambda x: x['csw_k']):.0f} | {lat} |")


if __name__ == "__main__":
    main()
