#!/usr/bin/env python3
"""Summarises an Autobahn|Testsuite fuzzingclient report and diffs it against the expectation.

    compare.py reports/servers/index.json --agent NAME [--mode quick|full] [--expected FILE]

Prints the per-category counts (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED, ...),
then every case that is not OK with what its report says went wrong. With --expected, compares
each case's `behavior` and `behaviorClose` with the expectation (restricted to the cases the mode
runs) and exits 1 on any difference: a changed outcome, a case missing from the run, or a case
the expectation does not list.
"""

import argparse
import collections
import fnmatch
import json
import os
import sys

# The cases scripts/autobahn.sh selects in each mode (wstest's fnmatch patterns).
MODE_PATTERNS = {
    "full": ["*"],
    "quick": [f"{n}.*" for n in range(1, 12)] + ["12.1.1", "13.1.1"],
}


def case_key(case_id):
    return tuple(int(part) for part in case_id.split("."))


def selected(case_id, mode):
    return any(fnmatch.fnmatchcase(case_id, p) for p in MODE_PATTERNS[mode])


def pair(entry):
    return f"{entry['behavior']}/{entry['behaviorClose']}"


def detail(report_dir, entry):
    """What the per-case report says: the result text and the close outcome."""
    path = os.path.join(report_dir, entry.get("reportfile", ""))
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return "(no per-case report)"
    parts = [report.get("result", ""), report.get("resultClose", "")]
    return " | ".join(p for p in parts if p)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("index")
    parser.add_argument("--agent", required=True)
    parser.add_argument("--mode", choices=sorted(MODE_PATTERNS), default="full")
    parser.add_argument("--expected")
    args = parser.parse_args()

    with open(args.index) as f:
        index = json.load(f)
    if args.agent not in index:
        print(f"agent {args.agent!r} not in {args.index} (has {sorted(index)})")
        return 2
    results = index[args.agent]
    report_dir = os.path.dirname(args.index)

    # Per-category counts; a case counts under its `behavior`.
    per_category = collections.defaultdict(collections.Counter)
    total = collections.Counter()
    for case_id, entry in results.items():
        per_category[case_key(case_id)[0]][entry["behavior"]] += 1
        total[entry["behavior"]] += 1
    kinds = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
    kinds += sorted(set(total) - set(kinds))
    print(f"Autobahn fuzzingclient, agent {args.agent}, mode {args.mode}: {len(results)} cases")
    print("category " + " ".join(f"{k:>13}" for k in kinds))
    for category in sorted(per_category):
        counts = per_category[category]
        print(f"{category:>8} " + " ".join(f"{counts[k]:>13}" for k in kinds))
    print("   total " + " ".join(f"{total[k]:>13}" for k in kinds))

    # UNIMPLEMENTED cases (compression not negotiated) are only counted, not listed.
    not_ok = [
        c for c in sorted(results, key=case_key)
        if pair(results[c]) not in ("OK/OK", "UNIMPLEMENTED/OK")
    ]
    if not_ok:
        print("cases not OK, UNIMPLEMENTED/OK aside (behavior/behaviorClose: report):")
        for c in not_ok:
            e = results[c]
            print(f"  {c}: {pair(e)}: {detail(report_dir, e)}")

    if not args.expected:
        return 0
    with open(args.expected) as f:
        expected = {
            c: v for c, v in json.load(f)["cases"].items() if selected(c, args.mode)
        }
    differences = []  # behavior/behaviorClose pairs that differ, one line per case
    for c in sorted(set(expected) | set(results), key=case_key):
        if c not in results:
            differences.append(f"  {c}: expected {expected[c]['behavior']}, not run")
            continue
        got = results[c]
        if c not in expected:
            differences.append(f"  {c}: {got['behavior']}, not in the expectation file")
            continue
        want = expected[c]
        if pair(got) != pair(want):
            differences.append(
                f"  {c}: {pair(got)}, expected {pair(want)}: {detail(report_dir, got)}"
            )
    if differences:
        print(f"{len(differences)} difference(s) from {args.expected}:")
        print("\n".join(differences))
        return 1
    print(f"all {len(expected)} selected cases match {args.expected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
