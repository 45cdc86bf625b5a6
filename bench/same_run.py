"""Whether two runs' output folders hold the same results: every file byte for byte, but metrics.jsonl and
summary.json compared with their wall-time fields left out. A refactor should leave the demo's exports equal.

    torchrun --nproc_per_node 2 train_grpo.py --out /tmp/before     (at the old commit; again at the new one)
    python bench/same_run.py /tmp/before /tmp/after

Prints one line per file and exits 1 if any differs or is missing. Skipped: .lock (a process id) and checkpoint.pt,
which records the command line (--out differs) and Python's and numpy's global random states (never seeded, since
nothing draws from them; kept for --resume). Two runs of the same commit differ there too.
"""

import hashlib
import json
import os
import sys

TIMES = ("time", "tokens_per_s", "rollout_tokens_per_s", "seconds", "minutes")


def results(obj):
    """obj without its wall-time fields (time, time_*, throughputs), at any depth."""
    if isinstance(obj, dict):
        return {k: results(v) for k, v in obj.items() if not k.startswith(TIMES)}
    return [results(v) for v in obj] if isinstance(obj, list) else obj


def load(path):
    with open(path, encoding="utf-8") as f:
        return [results(json.loads(line)) for line in f] if path.endswith(".jsonl") else results(json.load(f))


def main(a, b) -> int:
    files = sorted(os.path.relpath(os.path.join(root, f), a) for root, _, fs in os.walk(a) for f in fs
                   if not f.endswith(("checkpoint.pt", ".lock")))
    bad = 0
    for f in files:
        pa, pb = os.path.join(a, f), os.path.join(b, f)
        if not os.path.exists(pb):
            print(f"missing {f}")
            bad += 1
            continue
        if os.path.basename(f) in ("metrics.jsonl", "summary.json"):
            same, how = load(pa) == load(pb), "wall times left out"
        else:
            digests = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (pa, pb)]
            same, how = digests[0] == digests[1], f"sha256 {digests[0][:16]}"
        print(f"{'same' if same else 'DIFFERENT'} {f} ({how})")
        bad += not same
    print(f"{len(files) - bad} of {len(files)} equal" if bad else f"all {len(files)} equal")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
