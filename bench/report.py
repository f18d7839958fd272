"""Markdown summary of a recorded benchmark run: the source of the README's tables.

  python bench/report.py masked_linear              # the latest run in the records
  python bench/report.py masked_linear --device H100  # the latest run on a matching device
  python bench/report.py masked_linear --run-id ID
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS  # noqa: E402

SUMMARIES = {"masked_linear": "bench_masked_linear", "block_sparse": "bench_block_sparse",
             "ext": "bench_ext"}


def load_run(op: str, run_id: str | None, device: str | None) -> list[dict]:
    path = os.path.join(RESULTS, f"{op}.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"no records at {path}: run bench/{SUMMARIES[op]}.py first")
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if device:
        records = [r for r in records if device.lower() in r["device"].lower()]
    if not records:
        raise SystemExit(f"no records for {op} on a device matching {device!r}")
    run_id = run_id or records[-1]["run_id"]
    chosen = [r for r in records if r["run_id"] == run_id]
    if not chosen:
        raise SystemExit(f"run_id {run_id} not found in {path}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("op", choices=sorted(SUMMARIES))
    p.add_argument("--run-id")
    p.add_argument("--device", help="substring of the device name")
    args = p.parse_args(argv)
    records = load_run(args.op, args.run_id, args.device)
    module = __import__(SUMMARIES[args.op])
    r0 = records[0]
    print(f"{args.op} on {r0['device']}, torch {r0['torch']}, triton {r0['triton']}, "
          f"commit {r0['commit']}, {r0['time'][:10]} (run {r0['run_id']}):\n")
    print(module.summarize(records))


if __name__ == "__main__":
    main()
