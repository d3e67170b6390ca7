"""OpenAssistant sampling reports: real OpenAssistant models' answers, as players in our tournament.

OpenAssistant evaluated its checkpoints by sampling answers to fixed prompt sets and saving them as
"sampling reports" (``model/model_eval/manual/sampling_reports/`` in their repository)::

    {"model_name": ..., "date": ..., "args": {...},
     "prompts": [{"prompt": "...",
                  "results": [{"sampling_config": "k50", "sampling_params": {...}, "outputs": ["...", ...]}]}]}

The reports in ``data/oa_sampling_reports/`` answer the 100 root prompts of ``data/oasst_en_100_trees.jsonl``,
which the kit never trains on, so our models and OpenAssistant's can answer the same prompts and be
scored by the same reward model. Prompts are matched by text (:func:`prompt_key`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence


@dataclass
class SamplingResult:
    sampling_config: str
    sampling_params: dict[str, Any]
    outputs: list[str]


@dataclass
class ReportPrompt:
    prompt: str
    results: list[SamplingResult]


@dataclass
class SamplingReport:
    path: Path
    model_name: str
    date: str
    args: dict[str, Any]
    prompts: list[ReportPrompt]

    def configs(self) -> list[str]:
        """Sampling configs present, in the order they first appear."""
        seen = dict.fromkeys(r.sampling_config for p in self.prompts for r in p.results)
        return list(seen)

    def sampling_params(self, config: str) -> dict[str, Any]:
        for p in self.prompts:
            for r in p.results:
                if r.sampling_config == config:
                    return r.sampling_params
        raise KeyError(f"{self.path}: no sampling config {config!r}; it has {self.configs()}")

    def answers(self, config: str) -> dict[str, list[str]]:
        """``{prompt_key(prompt): outputs}`` for one sampling config; prompts without it are left out."""
        if config not in self.configs():
            raise KeyError(f"{self.path}: no sampling config {config!r}; it has {self.configs()}")
        out: dict[str, list[str]] = {}
        for p in self.prompts:
            for r in p.results:
                if r.sampling_config == config and r.outputs:
                    out.setdefault(prompt_key(p.prompt), []).extend(r.outputs)
        return out

    @property
    def short_name(self) -> str:
        """``theblackcat102/pythia-1b-deduped-sft`` -> ``pythia-1b-deduped-sft``."""
        return self.model_name.rstrip("/").split("/")[-1]


def prompt_key(text: str) -> str:
    """How prompts are matched across sources: the text with whitespace runs collapsed."""
    return " ".join(text.split())


def _need(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise ValueError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def read_sampling_report(path: str | Path) -> SamplingReport:
    """Read and check one report; a problem raises ValueError naming the file and the place in it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sampling report {path} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    where = str(path)
    prompts = []
    for i, p in enumerate(_need(raw, "prompts", list, where)):
        at = f"{where}: prompts[{i}]"
        results = []
        for j, r in enumerate(_need(p, "results", list, at)):
            rat = f"{at}.results[{j}]"
            outputs = _need(r, "outputs", list, rat)
            bad = [k for k, o in enumerate(outputs) if not isinstance(o, str)]
            if bad:
                raise ValueError(f"{rat}.outputs[{bad[0]}]: expected a string, got {type(outputs[bad[0]]).__name__}")
            params = r.get("sampling_params") or {}
            results.append(SamplingResult(_need(r, "sampling_config", str, rat), dict(params), list(outputs)))
        prompts.append(ReportPrompt(_need(p, "prompt", str, at), results))
    return SamplingReport(
        path=path,
        model_name=_need(raw, "model_name", str, where),
        date=str(raw.get("date", "")),
        args=dict(raw.get("args") or {}),
        prompts=prompts,
    )


def load_players(
    paths: Iterable[str | Path],
    configs: Sequence[str] = ("k50",),
    samples: int | None = None,
) -> dict[str, dict[str, list[str]]]:
    """Tournament players from any number of reports: ``{"<model> (<config>)": {prompt_key: [answers]}}``.

    One player per report and sampling config; ``samples`` keeps at most that many answers per prompt
    (the first ones). Two reports of the same model are told apart by their date.
    """
    players: dict[str, dict[str, list[str]]] = {}
    seen: dict[str, tuple[Path, str]] = {}  # player name -> (report, its date), to tell reports apart
    for path in paths:
        report = read_sampling_report(path)
        day = report.date[:10]
        for config in configs:
            answers = report.answers(config)
            if samples is not None:
                answers = {k: v[:samples] for k, v in answers.items()}
            name = f"{report.short_name} ({config})"
            if name in seen and seen[name][1] != day:
                name = f"{report.short_name} {day} ({config})"
            if name in seen:
                raise ValueError(f"{path}: same model, date and config as {seen[name][0]}; drop one of the two reports")
            players[name], seen[name] = answers, (report.path, day)
    return players
