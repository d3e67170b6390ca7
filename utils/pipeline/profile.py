"""Profiles: one YAML file per hardware target (``recipes/profiles/<name>.yaml``), data not code.

A profile lists, for each stage it runs, the notebook parameters it changes; every other parameter keeps
the default of the notebook's parameters cell, the one place defaults are written::

    name: colab-t4
    description: ...
    offline: false           # true: the runner sets HF_HUB_OFFLINE=1 for every stage
    stages:
      01_explore_trees:      # nothing changed: the notebook's defaults
      02_sft: {base_model: EleutherAI/pythia-1.4b-deduped, max_length: 1024}

So a profile that leaves a key out and one that lists its default value are the same run (and have the
same fingerprint). YAML anchors (``&data`` / ``<<: *data``) share values between stages; a key written
twice in one mapping is an error, not a silent last-one-wins. The runner adds ``run_dir`` and ``out_dir``.

``measured:`` holds what a run of the profile took, stage by stage (``seconds: {02_sft: 69}``, with ``on:`` saying
where): the runner's estimate for a stage's first run in a folder.

A profile may extend another (``extends: colab-t4``, a name or a path beside it) and hold only what differs: each
stage's parameters are the parent's with the child's on top, the child's stages are the parent's and its own, and
``offline`` is the parent's unless the child sets it. Its name, description and hardware are its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from utils.pipeline.notebook_params import ParameterError, effective_parameters
from utils.pipeline.stages import NOTEBOOKS_DIR, REPO_ROOT, notebook_path

PROFILES_DIR = REPO_ROOT / "recipes" / "profiles"
TOP_LEVEL_KEYS = {"name", "description", "offline", "stages", "shared", "hardware", "measured", "extends"}

__all__ = ["PROFILES_DIR", "REPO_ROOT", "Profile", "load_profile", "profile_path"]


@dataclass
class Profile:
    name: str
    path: Path
    description: str = ""
    offline: bool = False
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # every stage's parameters, the parent's included
    parent: "Profile | None" = None  # the profile this one extends
    own: dict[str, dict[str, Any]] = field(default_factory=dict)  # what this profile's file itself lists
    measured_seconds: dict[str, float] = field(default_factory=dict)  # each stage's time on the machine ``measured.on`` names

    def overrides(self, stage: str) -> dict[str, Any]:
        """The parameters this profile lists for ``stage`` (with those it inherits from the profile it extends)."""
        if stage not in self.stages:
            raise KeyError(f"profile {self.name!r} ({self.path}) has no stage {stage!r}; it has {sorted(self.stages)}")
        return dict(self.stages[stage] or {})

    def with_everywhere(self, key: str, value: Any, notebooks_dir: str | Path = NOTEBOOKS_DIR) -> "Profile":
        """This profile with ``key: value`` in every stage whose notebook declares ``key`` (``--on-error skip``)."""
        from dataclasses import replace

        from utils.pipeline.notebook_params import declared_parameters

        stages = {stage: ({**(given or {}), key: value} if key in declared_parameters(notebook_path(stage, notebooks_dir)) else given)
                  for stage, given in self.stages.items()}
        return replace(self, stages=stages)

    def with_setting(self, setting: str) -> "Profile":
        """This profile with one stage parameter set from ``STAGE.KEY=VALUE`` (a YAML value): the runner's ``--set``."""
        from dataclasses import replace

        target, sep, text = setting.partition("=")
        stage, dot, key = target.partition(".")
        if not sep or not dot or not key:
            raise ValueError(f"--set {setting!r}: write STAGE.KEY=VALUE, e.g. 03_reward.length_head=true")
        self.overrides(stage)  # an unknown stage: one line naming the profile's stages
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {setting!r}: the value is not YAML: {getattr(e, 'problem', e)}") from None
        return replace(self, stages={**self.stages, stage: {**self.stages[stage], key: value}})

    def stage_params(self, stage: str, notebooks_dir: str | Path = NOTEBOOKS_DIR) -> dict[str, Any]:
        """Every parameter ``stage`` runs with: the notebook's defaults, then this profile's values, checked.

        A value of the wrong type, an undeclared key or a missing ``*_path`` is one line naming profile,
        stage and key (:class:`ParameterError`).
        """
        overrides = self.overrides(stage)
        try:
            return effective_parameters(notebook_path(stage, notebooks_dir), overrides, root=REPO_ROOT)
        except ParameterError as e:
            raise ParameterError(f"{self.path}: stage {stage}: {e}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a profile with a key written twice is a mistake to report."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice (lines {seen[key]} and {line})", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def profile_path(name_or_path: str | Path) -> Path:
    """``tiny`` -> ``recipes/profiles/tiny.yaml``; a path is taken as it is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return PROFILES_DIR / f"{name_or_path}.yaml"


def load_profile(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> Profile:
    path = profile_path(name_or_path)
    if not path.exists():
        known = sorted(q.stem for q in PROFILES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no profile {str(name_or_path)!r}: {path} does not exist (known: {', '.join(known)})")
    if not path.is_file():
        raise ValueError(f"{path} is a folder, not a profile: give a YAML file or a name in {PROFILES_DIR}")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ValueError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), dict):
        raise ValueError(f"{path}: a profile needs a top-level 'stages' mapping")
    unknown = set(raw) - TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
    bad = [k for k, v in raw["stages"].items() if v is not None and not isinstance(v, dict)]
    if bad:
        raise ValueError(f"{path}: stage {bad[0]} must be a mapping of parameters (or empty), not {raw['stages'][bad[0]]!r}")
    own = stages = {str(k): dict(v or {}) for k, v in raw["stages"].items()}
    offline, parent = raw.get("offline"), None
    if raw.get("extends") is not None:
        parent = _parent(path, raw["extends"], _seen + (path.resolve(),))
        stages = {**{k: {**v, **stages.get(k, {})} for k, v in parent.stages.items()},
                  **{k: v for k, v in stages.items() if k not in parent.stages}}
        offline = parent.offline if offline is None else offline
    return Profile(name=raw.get("name", path.stem), path=path, description=raw.get("description", ""),
                   offline=bool(offline), stages=stages, parent=parent, own=own, measured_seconds=_measured(path, raw.get("measured")))


def _measured(path: Path, measured: Any) -> dict[str, float]:
    """``measured: {on: ..., seconds: {stage: s}}`` as ``{stage: s}``; anything else there is one line naming the file."""
    if measured is None:
        return {}
    seconds = measured.get("seconds") if isinstance(measured, dict) else None
    if not isinstance(seconds, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seconds.values()):
        raise ValueError(f"{path}: measured must be a mapping with seconds: {{stage: seconds}} (and on: where), got {measured!r}")
    return {str(k): float(v) for k, v in seconds.items()}


def _parent(path: Path, extends: Any, seen: tuple[Path, ...]) -> Profile:
    """The profile ``path`` extends: a name (``recipes/profiles/<name>.yaml``) or a path relative to ``path``'s folder."""
    if not isinstance(extends, str) or not extends:
        raise ValueError(f"{path}: extends must name a profile, got {extends!r}")
    beside = path.parent / extends
    target: str | Path = beside if beside.suffix in (".yaml", ".yml") and beside.exists() else extends
    if profile_path(target).resolve() in seen:
        chain = " -> ".join(p.stem for p in (*seen, profile_path(target).resolve()))
        raise ValueError(f"{path}: extends {extends!r} makes a cycle ({chain})")
    try:
        return load_profile(target, seen)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"{path}: extends {extends!r}: {e}") from None
