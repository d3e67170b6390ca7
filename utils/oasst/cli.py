"""``python -m utils.oasst stats PATH [PATH ...] [--lang en] [--top-k K] [--json] [--on-error skip]``

Reads OASST exports (flat or nested; .jsonl, .jsonl.gz, .parquet) and prints what the training views
would hold. Bad input ends the run with one line ``FILE:LINE: problem`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from .records import DataError
from .trees import STRUCTURE_FIELDS, load_trees, no_gc
from .views import count_views


def stats(paths: Sequence[str], lang: Sequence[str] | None = None, top_k: int | None = None, on_error: str = "raise") -> dict[str, Any]:
    """The numbers ``stats`` prints: trees, messages, the size of each view and the read's account."""
    with no_gc():
        trees, report = load_trees(paths, lang, on_error, fields=STRUCTURE_FIELDS)  # type: ignore[arg-type]
        views = count_views(trees, top_k)
        n_trees = len(trees)
        # Released while the cyclic GC is still off, the trees are freed by reference counting alone,
        # and no collection ever scans them (none of them can be part of a cycle).
        del trees
    return {
        "trees": n_trees,
        "messages": report.kept,
        "sft_threads": views.sft_threads,
        "rm_groups": views.rm_groups,
        "rm_pairs": views.rm_pairs,
        "rl_prompts": views.rl_prompts,
        "read": report.read,
        "skipped": dict(sorted(report.skipped.items())),
        "forms": report.forms,
    }


def _print_text(s: dict[str, Any]) -> None:
    for path, form in s["forms"].items():
        print(f"{path}: {form}")
    for key in ("trees", "messages", "sft_threads", "rm_groups", "rm_pairs", "rl_prompts"):
        print(f"{key:<12} {s[key]:>9,}")
    print(f"{'skipped':<12} {sum(s['skipped'].values()):>9,}")
    for reason, n in s["skipped"].items():
        print(f"  {reason:<30} {n:>9,}")
    print(f"read {s['read']:,} = kept {s['messages']:,} + skipped {sum(s['skipped'].values()):,}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.oasst", description="OASST data tools")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("stats", help="count trees, messages and training-view sizes")
    p.add_argument("paths", nargs="+", help="flat or nested exports: .jsonl, .jsonl.gz or .parquet")
    p.add_argument("--lang", action="append", help="language code(s) to keep, e.g. en or en,de (default: all)")
    p.add_argument("--top-k", type=int, default=None, help="keep only replies ranked better than K, as OpenAssistant's top_k")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="stop at a bad record (default) or skip and count it")
    args = parser.parse_args(argv)
    try:
        s = stats(args.paths, args.lang, args.top_k, args.on_error)
    except DataError as e:
        print(e, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        _print_text(s)
    return 0
