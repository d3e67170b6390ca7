"""Profiles: one YAML file per hardware target (``recipes/profiles/<name>.yaml``), data not code.

A profile names the notebook parameters of each stage::

    name: tiny
    description: ...
    offline: true            # the runner sets HF_HUB_OFFLINE=1 for every stage
    stages:
      01_explore_trees: {data_paths: [...], lang: [en]}
      02_sft: {...}

YAML anchors (``&data`` / ``<<: *data``) share values between stages. The runner adds ``run_dir`` and
``out_dir`` to every stage's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO_ROOT / "recipes" / "profiles"


@dataclass
class Profile:
    name: str
    path: Path
    description: str = ""
    offline: bool = False
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stage_params(self, stage: str) -> dict[str, Any]:
        if stage not in self.stages:
            raise KeyError(f"profile {self.name!r} ({self.path}) has no stage {stage!r}; it has {sorted(self.stages)}")
        return dict(self.stages[stage] or {})


def profile_path(name_or_path: str | Path) -> Path:
    """``tiny`` -> ``recipes/profiles/tiny.yaml``; a path is taken as it is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return PROFILES_DIR / f"{name_or_path}.yaml"


def load_profile(name_or_path: str | Path) -> Profile:
    path = profile_path(name_or_path)
    if not path.exists():
        known = sorted(q.stem for q in PROFILES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no profile {str(name_or_path)!r}: {path} does not exist (known: {', '.join(known)})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ValueError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), dict):
        raise ValueError(f"{path}: a profile needs a top-level 'stages' mapping")
    unknown = set(raw) - {"name", "description", "offline", "stages", "shared", "hardware", "measured"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
    return Profile(
        name=raw.get("name", path.stem),
        path=path,
        description=raw.get("description", ""),
        offline=bool(raw.get("offline", False)),
        stages={k: dict(v or {}) for k, v in raw["stages"].items()},
    )
