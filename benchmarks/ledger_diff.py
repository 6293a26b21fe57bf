"""Are two runs' ledgers the same, record for record? (The check a behaviour-preserving change must pass.)

Compares results.jsonl of two run folders line by line: the same records in the same order, every field equal,
except the wall seconds (and a path compared by its file name, since the runs' folders differ).

    invmm demo --out /tmp/before   # on the old code
    invmm demo --out /tmp/after    # on the new code
    python benchmarks/ledger_diff.py /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def load(run: Path) -> list[dict]:
    out = []
    for line in (run / "results.jsonl").read_text().splitlines():
        d = json.loads(line)
        d.pop("seconds", None)
        d["path"] = os.path.basename(d["path"])
        out.append(d)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args()
    a, b = load(args.before), load(args.after)
    if [x["id"] for x in a] != [x["id"] for x in b]:
        raise SystemExit(f"the ledgers hold other records or another order: {len(a)} vs {len(b)} lines")
    diff = [(x["id"], f) for x, y in zip(a, b) for f in sorted(set(x) | set(y)) if x.get(f) != y.get(f)]
    print(f"{len(a)} records in the same order, compared field by field (all but the wall seconds; the path by "
          f"file name): {len(diff)} differences")
    for image_id, field in diff[:20]:
        print(f"  {image_id}: {field}")


if __name__ == "__main__":
    main()
