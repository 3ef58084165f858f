"""The health file and probe (what a distroless image's HEALTHCHECK runs):
`sluice --health-check` fails before sluice runs, succeeds while every shard
consumes, says why not while they cannot (the queue is missing), and fails
again once sluice has stopped (the file is removed, and a stale one is not
trusted)."""

import os
import signal
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness import SLUICE, Test


def probe(t, path):
    r = subprocess.run([str(SLUICE), "--health-check"], capture_output=True, text=True,
                       env={**t.sluice_env(), "SLUICE_HEALTH_FILE": str(path)}, timeout=10)
    return r.returncode, r.stderr.strip()


def main(t):
    q = t.queue("events")
    tmp = Path(tempfile.mkdtemp(prefix="sluice-health-"))
    try:
        checks(t, q, tmp / "sluice.health")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def checks(t, q, path):

    rc, why = probe(t, path)
    t.eq(rc, 1, "probe before sluice runs: exit status")
    t.check("cannot read" in why, "probe says the file is missing", why)

    s = t.sluice("--queue", q, "--shards", "2", env={"SLUICE_HEALTH_FILE": str(path)})
    t.wait_until(lambda: probe(t, path)[0] == 0, 20, "the probe turns healthy")
    t.eq(path.read_text(), "ok\n", "health file while consuming")

    s.signal(signal.SIGTERM)
    t.eq(s.expect_exit(30), 0, "sluice exit status after SIGTERM")
    rc, why = probe(t, path)
    t.eq(rc, 1, "probe after sluice stopped: exit status")

    # A file left by a sluice that died (not rewritten): stale, not healthy.
    path.write_text("ok\n")
    old = time.time() - 60
    os.utime(path, (old, old))
    rc, why = probe(t, path)
    t.eq(rc, 1, "probe of a stale file: exit status")
    t.check("not updated" in why, "probe says the file is stale", why)

    # A queue that does not exist: sluice never consumes; the file says why
    # until sluice gives up.
    s = t.sluice("--queue", q + "_missing", env={"SLUICE_HEALTH_FILE": str(path)})
    rc = s.expect_exit(30)
    t.check(rc != 0, "sluice exits non-zero on a missing queue", rc)
    t.eq(probe(t, path)[0], 1, "probe after a failed start: exit status")


Test.main(main)
