"""Stage 05's reward-against-KL picture: every player (the RL stages' snapshots, best-of-n, DPO, SFT) on the fixed set of
:mod:`utils.rl.fixed_set`, each gain paired by prompt against SFT, and the check the RL issue asks for (:func:`rl_check`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from utils.rl.fixed_set import (JUDGE, PROXY, WORDS, Conversation, PolicySamples, best_of_n_kl, best_of_n_scores, load_samples,
                             paired_mean, point, sample_policy, samples_point, score_samples)


def stage_samples(run_dir: str | Path, stage: str) -> list[PolicySamples]:
    """The fixed-set samples an RL stage saved at its snapshots (``[]`` where it has not run or kept none)."""
    from utils.pipeline.artifacts import StageNotRun, read_metrics, stage_dir

    try:
        name = read_metrics(run_dir, stage).get("fixed_set")
    except StageNotRun:
        return []
    return load_samples(stage_dir(run_dir, stage) / name) if name else []


def reward_vs_kl(models, judges: Mapping[str, Any], rl_samples: Sequence[PolicySamples], prompts: Sequence[Conversation], *,
                 best_of: Sequence[int], replies_per_prompt: int, max_new_tokens: int, batch_size: int = 8,
                 score_batch_size: int = 16, seed: int = 0, log=print) -> tuple[list[dict[str, Any]], list[PolicySamples]]:
    """Gao et al. (2022)'s picture in numbers: every policy's proxy and judge gain over SFT against its KL to SFT.

    On the fixed prompts SFT answers ``lcm(replies_per_prompt, *best_of)`` times; best-of-n picks among those
    replies (KL: the analytic bound); the RL stages' snapshots (``rl_samples``, sampled in their own stage on the
    same prompts with the same seeds) and DPO (sampled here) are scored by every judge. Gains are paired by prompt
    against SFT. Returns the points and the samples they were measured on.
    """
    from math import lcm

    from utils.evaluate.models import use
    from utils.model.modeling import Countdown
    from utils.rl.reward_functions import scorer_reward

    if any(s.max_new_tokens != max_new_tokens for s in rl_samples):
        found = sorted({s.max_new_tokens for s in rl_samples})
        raise ValueError(f"the RL stages sampled their fixed set with max_new_tokens {found}, stage 05 with {max_new_tokens}: "
                         "set fixed_max_new_tokens to theirs (or None)")
    rewards = {name: scorer_reward(judge.scorer, batch_size=score_batch_size) for name, judge in judges.items()}
    tokenizer = models.tokenizer
    k_sft = lcm(replies_per_prompt, *best_of)
    # Sampling is the cost: SFT's k_sft replies to each prompt, DPO's replies_per_prompt (the RL stages sampled theirs).
    countdown = Countdown(k_sft + replies_per_prompt * ("dpo" in models.names), "replies to each fixed prompt", out=log)
    sft = sample_policy("sft", lambda: use(models, "sft"), None, tokenizer, prompts, k_sft, max_new_tokens, batch_size, seed)
    baseline = score_samples(sft, rewards)
    countdown.tick("reward vs KL: SFT sampled and scored", parts=k_sft)
    points = [samples_point(sft, baseline, baseline)]
    for n in sorted(set(best_of) - {1}):
        points.append(point(f"best_of_{n}", best_of_n_scores(baseline, n), baseline, best_of_n_kl(n), n=n))
    samples = [sft, *rl_samples]
    for s in rl_samples:
        points.append(samples_point(s, score_samples(s, rewards), baseline, update=int(s.player.split("@")[1])))
    if "dpo" in models.names:
        dpo = sample_policy("dpo", lambda: use(models, "dpo"), lambda: use(models, "sft"), tokenizer, prompts, replies_per_prompt,
                            max_new_tokens, batch_size, seed)
        points.append(samples_point(dpo, score_samples(dpo, rewards), baseline))
        samples.append(dpo)
        countdown.tick("reward vs KL: DPO sampled and scored", parts=replies_per_prompt)
    return points, samples


def family(player: str) -> str:
    """``ppo@4`` -> ``ppo``, ``best_of_4`` -> ``best_of_n``: the line a point belongs to in the picture."""
    return "best_of_n" if player.startswith("best_of_") else player.split("@")[0]


def gain_over(p: Mapping[str, Any], reference: Mapping[str, Any]) -> tuple[float, float] | None:
    """``p``'s proxy gain minus ``reference``'s, paired by prompt, with its standard error; None without per-prompt
    gains on two or more common prompts."""
    pairs = [(a - b) for a, b in zip(p.get("proxy_gain_by_prompt") or [], reference.get("proxy_gain_by_prompt") or [])
             if a is not None and b is not None]
    return paired_mean(pairs) if len(pairs) > 1 else None


def rl_check(points: Sequence[Mapping[str, Any]], target_kl: float | None, against: str = "best_of_2") -> list[dict[str, str]]:
    """For each RL stage's last snapshot: does it beat ``against`` on the proxy, by more than 2 standard errors
    above zero, within ``target_kl``? One row per stage, the figures beside each verdict: beside the first,
    ``against``'s gain and the snapshot's gain minus it, paired by prompt (± one standard error), since "no" by
    less than that standard error cannot tell the two apart."""
    reference = next((p for p in points if p["player"] == against), None)
    last: dict[str, Mapping[str, Any]] = {}
    for p in points:
        if "@" in p["player"]:
            last[family(p["player"])] = max(p, last.get(family(p["player"]), p), key=lambda q: q.get("update", 0))
    rows = []
    for name, p in last.items():
        g, se = p["proxy_gain"], p["proxy_gain_se"]
        rows.append({
            "player": p["player"],
            "proxy gain": f"{g:+.3f} ± {se:.3f}",
            f"≥ {against}": "n/a" if reference is None else versus(g, reference, gain_over(p, reference)),
            "> 2 s.e.": "yes" if g > 2 * se else "no",
            "KL ≤ target": "n/a" if target_kl is None else f"{'yes' if p['kl'] <= target_kl else 'no'} ({p['kl']:.2f} vs {target_kl:g})",
            "judge gain": "" if p.get("judge_gain") is None else f"{p['judge_gain']:+.3f} ± {p['judge_gain_se']:.3f}",
            "words gain": f"{p['gains'][WORDS][0]:+.1f}" if WORDS in p.get("gains", {}) else "",
        })
    return rows


def versus(gain: float, reference: Mapping[str, Any], difference: tuple[float, float] | None) -> str:
    """"yes (+0.060; +0.020 ± 0.012)": the verdict, the reference's gain and the paired difference where known."""
    beside = f"{reference['proxy_gain']:+.3f}" + ("" if difference is None else f"; {difference[0]:+.3f} ± {difference[1]:.3f}")
    return f"{'yes' if gain >= reference['proxy_gain'] else 'no'} ({beside})"


def points_table(points: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The points as table rows (± one standard error over prompts)."""
    def pm(mean, se, digits=3) -> str:
        if mean is None:
            return ""
        return f"{mean:+.{digits}f} ± {se:.{digits}f}" if se == se else f"{mean:+.{digits}f}"
    rows = []
    for p in points:
        words = p.get("gains", {}).get(WORDS)
        rows.append({"player": p["player"], "KL to SFT": f"{p['kl']:.2f}" + (f" ± {p['kl_se']:.2f}" if p["kl_se"] else ""),
                     "proxy gain": pm(p["proxy_gain"], p["proxy_gain_se"]), "judge gain": pm(p.get("judge_gain"), p.get("judge_gain_se")),
                     "words": f"{p.get('words', float('nan')):.0f}" + (f" ({words[0]:+.1f})" if words else ""),
                     "ended": f"{p['ended_fraction']:.2f}" if "ended_fraction" in p else ""})
    return rows


def plot_reward_vs_kl(points: Sequence[Mapping[str, Any]], path: str | Path | None = None):
    """Proxy and judge gain over SFT against √KL(π ‖ π_SFT), ± 2 standard errors over prompts: best-of-n as one
    line (n marked), each RL stage's snapshots as one line (updates marked), DPO as one point (Gao et al. 2022,
    figure 1). Where the proxy's line climbs and the judge's does not, the policy is learning the proxy's taste."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3), constrained_layout=True, sharex=True)
    families: dict[str, list[Mapping[str, Any]]] = {}
    for p in points:
        if p["player"] != "sft":
            families.setdefault(family(p["player"]), []).append(p)
    for ax, name in zip(axes, (PROXY, JUDGE)):
        for fam, ps in families.items():
            ps = sorted(ps, key=lambda q: q["kl"]) if fam == "best_of_n" else ps
            if ps[0].get(f"{name}_gain") is None:
                continue
            origin = [] if ps[0].get("update") == 0 else [0.0]  # from SFT itself, unless the run's own update 0 is there
            xs = origin + [max(q["kl"], 0.0) ** 0.5 for q in ps]
            ys = origin + [q[f"{name}_gain"] for q in ps]
            es = origin + [2 * q[f"{name}_gain_se"] for q in ps]
            line = ax.errorbar(xs, ys, yerr=es, fmt="o-" if fam != "dpo" else "D", capsize=3, label=fam, ms=4)
            for q, x, y in zip(ps, xs[len(origin):], ys[len(origin):]):
                label = str(q.get("n", q.get("update", "")))
                if label:
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=line[0].get_color())
        ax.axhline(0, color="grey", lw=0.6)
        ax.set(xlabel="√KL(π ‖ π_SFT)  (√nats per reply)", ylabel="gain over SFT, paired by prompt (± 2 s.e.)",
               title=f"{name} ({'RL trained against it' if name == PROXY else 'independent'})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Reward against KL: best-of-n (n marked), RL snapshots (updates marked), DPO")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
