"""A notebook's parameters cell: what it declares, and whether a profile's values fit it.

The runner's rules for a stage notebook (``notebooks/<NN_stage>.ipynb``):

* exactly one code cell is tagged ``parameters`` (papermill's convention), and it holds only
  ``name = literal`` lines and comments. A literal is what :func:`ast.literal_eval` reads: numbers,
  strings, booleans, ``None``, and lists, tuples and dicts of them; ``2 * 192`` is not one.
* it declares ``run_dir`` and ``out_dir``, which the runner sets (to the run folder and the stage's folder).

The kit's stages write their cell from a ``Params`` dataclass (:mod:`utils.params`), whose annotations decide which
values a profile may give (:func:`utils.params.fit`). A notebook of your own without one is checked against its
defaults (:func:`fit_value`): the same type as the default (an int is a fine float), ``None`` only where the default is
``None`` (which takes anything), a list's elements of the type of the default's first, a dict merged into the
default's entries. Either way a parameter named ``*_path`` or ``*_paths`` names files that must exist (``hf:`` names
are the Hub's).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from utils.params import RUNNER_PARAMS, ParameterError  # noqa: F401 (the runner's error, raised here too)

HUB_PREFIX = "hf:"


@dataclass(frozen=True)
class Parameter:
    name: str
    default: Any
    line: int  # in the parameters cell, 1-based


def parameters_cell(notebook: Path) -> str:
    try:
        cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError) as e:
        raise ParameterError(f"{notebook}: not a readable notebook ({type(e).__name__}: {e})") from None
    tagged = [c for c in cells if c.get("cell_type") == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ParameterError(f"{notebook}: {len(tagged)} code cells tagged 'parameters', the runner needs exactly one")
    source = tagged[0]["source"]
    return "".join(source) if isinstance(source, list) else source


@lru_cache(maxsize=64)
def _declared(notebook: str, mtime_ns: int, size: int) -> tuple[Parameter, ...]:
    source = parameters_cell(Path(notebook))
    where = f"{notebook}, parameters cell"
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ParameterError(f"{where} line {getattr(e, 'lineno', '?')}: not valid Python: {e.args[0]}") from None
    lines = source.splitlines()
    params = []
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(node, "target", None)
        text = lines[node.lineno - 1].strip()
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or not isinstance(target, ast.Name) or node.value is None:
            raise ParameterError(f"{where} line {node.lineno}: {text!r}: only `name = literal` lines belong here")
        try:
            default = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            raise ParameterError(
                f"{where} line {node.lineno}: {target.id} = {ast.get_source_segment(source, node.value)} is not a literal "
                f"(write the value itself, e.g. 384, not an expression: papermill and the runner read it as data)"
            ) from None
        params.append(Parameter(target.id, default, node.lineno))
    missing = [name for name in RUNNER_PARAMS if name not in {p.name for p in params}]
    if missing:
        raise ParameterError(f"{where}: declares no {' and no '.join(missing)} (the runner sets both; every stage notebook declares them)")
    return tuple(params)


def declared_parameters(notebook: str | Path) -> dict[str, Parameter]:
    """The parameters of ``notebook``'s parameters cell, in order, each with its default and line."""
    path = Path(notebook)
    try:
        stat = path.stat()
    except OSError:
        raise ParameterError(f"{path}: no such notebook") from None
    return {p.name: p for p in _declared(str(path), stat.st_mtime_ns, stat.st_size)}


def notebook_defaults(notebook: str | Path) -> dict[str, Any]:
    """The parameters cell as values (read with ``ast``, so the scripts run where papermill is not installed)."""
    return {name: p.default for name, p in declared_parameters(notebook).items()}


def _type_name(value: Any) -> str:
    return {bool: "a bool", int: "an int", float: "a float", str: "a string", list: "a list", tuple: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)


def fit_value(value: Any, default: Any, key: str = "") -> Any:
    """``value`` as the parameter whose default is ``default`` takes it (a notebook without a ``Params`` class), or a
    one-line :class:`ParameterError`."""

    def wrong(expected: str) -> ParameterError:
        return ParameterError(f"{key}: expected {expected} (the notebook's default is {default!r}), got {value!r} ({_type_name(value)})")

    if default is None:
        return value
    if value is None:
        raise ParameterError(f"{key}: null is not allowed (the notebook's default is {default!r})")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an int")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise wrong("a string")
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise wrong("a list")
        if not default:
            return list(value)
        return [fit_value(v, default[0], key=f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise wrong("a mapping")
        unknown = sorted(set(value) - set(default))
        if unknown:
            raise ParameterError(f"{key}: unknown entries {', '.join(map(str, unknown))} (it has: {', '.join(map(str, default))})")
        return {**default, **{k: fit_value(v, default[k], key=f"{key}.{k}") for k, v in value.items()}}
    return value


def effective_parameters(notebook: str | Path, overrides: dict[str, Any], root: str | Path | None = None) -> dict[str, Any]:
    """The notebook's defaults with ``overrides`` fitted in: what the stage runs with (``run_dir``/``out_dir`` left out).

    Raises a one-line :class:`ParameterError` naming the key for an undeclared key, a value of the wrong
    type, or (with ``root``, against which relative paths resolve) a ``*_path``/``*_paths`` that does not exist.
    """
    declared = declared_parameters(notebook)
    runner = sorted(set(overrides) & set(RUNNER_PARAMS))
    if runner:
        raise ParameterError(f"{', '.join(runner)}: set by the runner, not by a profile")
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        known = ", ".join(sorted(set(declared) - set(RUNNER_PARAMS)))
        raise ParameterError(f"{', '.join(unknown)}: not declared in {Path(notebook).name}'s parameters cell (it declares: {known})")
    from utils.params import fit_all
    from utils.pipeline.stages import params_class

    cls = params_class(Path(notebook).stem)
    if cls is not None:  # a stage with a Params dataclass: its defaults (the cell's, by test) and annotations decide
        params = fit_all(cls, overrides)
    else:
        params = {name: p.default for name, p in declared.items() if name not in RUNNER_PARAMS}
        for key, value in overrides.items():
            params[key] = fit_value(value, declared[key].default, key=key)
    if root is not None:
        check_paths(params, Path(root))
    return params


def check_paths(params: dict[str, Any], root: Path) -> None:
    for key, value in params.items():
        if not (key.endswith("_path") or key.endswith("_paths")) or value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and item.startswith(HUB_PREFIX):
                continue
            if not (root / str(item)).exists():
                raise ParameterError(f"{key}: {item} does not exist (relative paths start at {root})")
