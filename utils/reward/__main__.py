"""Reward model tools on the command line: accuracy on preference pairs (FILE is HH-RLHF pairs or an OASST export;
``--on-error skip`` skips bad records and says how many, and why)::

    python -m utils.reward eval --model runs/tiny/03_reward/reward_model --pairs data/hh_rlhf_harmless_base_test_part1.jsonl.gz
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from utils.reward.evaluation import PairResult, evaluate_pairs, format_split, read_pairs_file
from utils.reward.model import RewardScorer

def _eval_command(args: argparse.Namespace) -> int:
    import transformers

    from utils.oasst import Report

    report = Report()
    pairs = read_pairs_file(args.pairs, on_error=args.on_error, report=report)  # bad data fails before a model loads
    transformers.utils.logging.disable_progress_bar()  # stderr is for the one line that says what went wrong
    scorer = RewardScorer.load(args.model)
    result: PairResult = evaluate_pairs(scorer, pairs, batch_size=args.batch_size)
    skipped = dict(sorted(report.skipped.items()))
    if args.json:
        print(json.dumps({"accuracy": result.accuracy, "n": result.n, "read": report.read, "skipped": skipped,
                          "notes": dict(report.notes)}))
        return 0
    print(f"accuracy {result.accuracy:.4f} on {result.n} pairs from {args.pairs}")
    print(f"length baseline (the longer reply wins) {result.length_baseline:.4f}")
    # Where length cannot help: on pairs whose chosen reply is the shorter, "the longer reply wins" scores 0.
    for key, label in (("longer_preferred", "chosen reply longer "), ("shorter_preferred", "chosen reply shorter"),
                       ("same_length", "same length         ")):
        print(f"  {label}  accuracy {format_split(result.by_length[key])}")
    if skipped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
        print(f"skipped {sum(skipped.values())} of {report.read} records read ({reasons})")
    if report.notes.get("hh_parted_early"):
        print(f"{report.notes['hh_parted_early']} pairs part before their final reply: prompt = the shared turns, "
              "answer = the rest of each transcript (as trl reads HH-RLHF)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.reward", description="Reward model tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="pairwise accuracy of a reward model on preference pairs")
    ev.add_argument("--model", required=True, help="reward model directory (03_reward's reward_model)")
    ev.add_argument("--pairs", required=True, help="HH-RLHF pairs (.jsonl/.jsonl.gz) or an OASST export")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--json", action="store_true", help='print {"accuracy", "n", "read", "skipped", "notes"} as JSON')
    ev.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                    help="stop at a bad record (default) or skip it, counted and reported")
    args = parser.parse_args(argv)
    try:
        return _eval_command(args)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
