#!/usr/bin/env python3
"""Write deploy/seccomp-io_uring.json: a container runtime's default seccomp
profile with io_uring allowed, so that sluice runs its io_uring backend in a
container (under the default profile it falls back to epoll).

BASE is by default Podman's default profile as Debian 12 ships it
(golang-github-containers-common 0.50.1: /usr/share/containers/seccomp.json;
the committed file was made from it); moby's profiles/seccomp/default.json
works too. The output is BASE unchanged but for one rule added after its
big allow-list:

    {"names": ["io_uring_enter", "io_uring_register", "io_uring_setup"],
     "action": "SCMP_ACT_ALLOW", ...}

and the three names taken out of any rule that denies them (the base has
none: they are simply missing from its allow-list, so the default action,
ENOSYS, applies). The output keeps the base's layout (tab-indented, same key
order), so `diff BASE deploy/seccomp-io_uring.json` shows only the new rule.

Usage: deploy/seccomp-io_uring.py [BASE [OUT]]
       deploy/seccomp-io_uring.py --check [BASE [OUT]]
         (exit 1 if OUT is not what BASE gives; 77 if BASE is missing)
"""
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BASE = Path("/usr/share/containers/seccomp.json")
DEFAULT_OUT = HERE / "seccomp-io_uring.json"
IO_URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]


def generate(base_text: str, base_name: str) -> str:
    prof = json.loads(base_text)
    if prof.get("defaultAction") != "SCMP_ACT_ERRNO":
        raise SystemExit(f"base profile: defaultAction is {prof.get('defaultAction')!r}, "
                         "expected SCMP_ACT_ERRNO (an allow-list)")
    rules = prof["syscalls"]
    # Take io_uring out of every rule (a deny rule in a newer base; an allow
    # rule if the base already has them: then this rule is the only one).
    kept = []
    for r in rules:
        names = [n for n in r.get("names") or [] if n not in IO_URING]
        if r.get("names") and not names:
            continue
        if r.get("names"):
            r["names"] = names
        kept.append(r)
    sha = hashlib.sha256(base_text.encode()).hexdigest()
    rule = {
        "names": IO_URING,
        "action": "SCMP_ACT_ALLOW",
        "args": [],
        "comment": "sluice: io_uring for the broker socket (src/io/uring.c). Added by "
                   f"deploy/seccomp-io_uring.py to {base_name} (sha256 {sha}); "
                   "everything else is that profile unchanged",
        "includes": {},
        "excludes": {},
    }
    # After the first unconditional allow rule (the big allow-list).
    at = next((i + 1 for i, r in enumerate(kept)
               if r.get("action") == "SCMP_ACT_ALLOW" and not r.get("args")
               and not r.get("includes") and not r.get("excludes")), len(kept))
    kept.insert(at, rule)
    prof["syscalls"] = kept
    return json.dumps(prof, indent="\t") + "\n"


def main(argv):
    check = bool(argv) and argv[0] == "--check"
    if check:
        argv = argv[1:]
    base = Path(argv[0]) if argv else DEFAULT_BASE
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    if not base.is_file():
        print(f"seccomp-io_uring.py: {base} is missing (Debian: golang-github-containers-common)",
              file=sys.stderr)
        return 77
    text = generate(base.read_text(), str(base))
    if check:
        if out.is_file() and out.read_text() == text:
            return 0
        print(f"seccomp-io_uring.py: {out} is not what {base} gives "
              f"(regenerate with deploy/seccomp-io_uring.py)", file=sys.stderr)
        return 1
    out.write_text(text)
    print(f"seccomp-io_uring.py: wrote {out} from {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
