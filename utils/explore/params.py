"""Stage 01's parameters, each default written here once (the notebook's parameters cell is generated from this)."""

from __future__ import annotations

from dataclasses import dataclass

from utils.params import DataParams, param


@dataclass
class ExploreParams(DataParams):
    """Which export to describe (the training files, as every later stage reads them) and which tree to show."""

    example_tree_id: str | None = param(None, "the tree rendered at the end; None picks a deep, ranked, readable one")
