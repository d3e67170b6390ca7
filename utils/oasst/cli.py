"""``python -m utils.oasst stats PATH [PATH ...] [--lang en] [--top-k K] [--json] [--on-error skip]``

Reads OASST exports (flat or nested; .jsonl, .jsonl.gz, .parquet) and prints what the training views
would hold; HH-RLHF pair files (told from their content) are counted in pairs, in a section of their
own. Bad input ends the run with one line ``FILE:LINE: problem`` and exit status 2; with
``--on-error skip`` bad records are skipped and counted by reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from .external import is_hh_file, read_hh_pairs
from .records import DataError, Report
from .trees import STRUCTURE_FIELDS, load_trees, no_gc
from .views import count_views


def stats(paths: Sequence[str], lang: Sequence[str] | None = None, top_k: int | None = None, on_error: str = "raise") -> dict[str, Any]:
    """The numbers ``stats`` prints: for OASST exports trees, messages, the size of each view and the read's
    account (in messages); for HH-RLHF files, under ``"hh_rlhf"``, their pairs and account (in pairs)."""
    hh_paths = [p for p in paths if is_hh_file(p)]
    oasst_paths = [p for p in paths if p not in hh_paths]
    out: dict[str, Any] = _oasst_stats(oasst_paths, lang, top_k, on_error) if oasst_paths else {"forms": {}}
    if hh_paths:
        report = Report()
        for path in hh_paths:
            read_hh_pairs(path, on_error, report)  # type: ignore[arg-type]
        out["hh_rlhf"] = {"pairs": report.kept, "read": report.read, "skipped": dict(sorted(report.skipped.items())),
                          "notes": dict(report.notes)}
        out["forms"].update(report.forms)
    return out


def _oasst_stats(paths: Sequence[str], lang: Sequence[str] | None, top_k: int | None, on_error: str) -> dict[str, Any]:
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
    if "trees" in s:
        for key in ("trees", "messages", "sft_threads", "rm_groups", "rm_pairs", "rl_prompts"):
            print(f"{key:<12} {s[key]:>9,}")
        _print_account(s["read"], s["messages"], s["skipped"], "messages")
    if "hh_rlhf" in s:
        hh = s["hh_rlhf"]
        print(f"{'hh_pairs':<12} {hh['pairs']:>9,}")
        _print_account(hh["read"], hh["pairs"], hh["skipped"], "pairs")
        if hh["notes"].get("hh_parted_early"):
            print(f"  {hh['notes']['hh_parted_early']:,} pairs part before their final reply: prompt = the shared turns")


def _print_account(read: int, kept: int, skipped: dict[str, int], unit: str) -> None:
    print(f"{'skipped':<12} {sum(skipped.values()):>9,}")
    for reason, n in skipped.items():
        print(f"  {reason:<30} {n:>9,}")
    print(f"read {read:,} = kept {kept:,} + skipped {sum(skipped.values()):,} ({unit})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.oasst", description="OASST data tools")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("stats", help="count trees, messages and training-view sizes")
    p.add_argument("paths", nargs="+", help="flat or nested exports, or HH-RLHF pair files: .jsonl, .jsonl.gz or .parquet")
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
