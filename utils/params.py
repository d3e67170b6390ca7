"""A stage's parameters, written once: a dataclass whose fields hold the defaults and whose metadata holds the help.

Each stage package has a ``Params`` dataclass (``utils/reward/params.py``: ``RewardParams``). From it:

* the notebook's parameters cell is generated (``python -m utils.pipeline.repo sync``; a test fails when they differ), so
  papermill still sees an ordinary cell and a reader still sees every default with its help;
* the runner and ``recipes.train`` check a profile's values against the field's *annotation* (:func:`fit`):
  ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``, ``list[X]``, ``dict[str, X]``;
* the stage's code reads the values from an instance (``RewardParams.from_namespace(globals())`` in the notebook,
  ``RewardParams(**params)`` in the script): no second copy of a default anywhere.

The data parameters, which every stage that reads OASST shares, are :class:`DataParams`, written here once.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

RUNNER_PARAMS = ("run_dir", "out_dir")  # set by the runner, never by a profile; not fields of a Params class
CELL_HEADER = ("# Parameters: the defaults are the `tiny` profile's, written from {source}\n"
               "# by `python -m utils.pipeline.repo sync` (each default lives there, once); papermill and the runner override them.")
COMMENT_COLUMN = 31
CELL_WIDTH = 120


class ParameterError(ValueError):
    """A profile's value, or a parameters cell, breaks the rules: the message is one line."""


def param(default: Any, help: str = "") -> Any:
    """A Params field: its default and the one-line help the notebook's cell shows beside it."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


class Params:
    """Mixin of every stage's parameters dataclass."""

    @classmethod
    def from_namespace(cls, namespace: dict[str, Any]):
        """The values of the names this class declares, from a notebook's ``globals()`` or a script's dict."""
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in namespace]
        if missing:
            raise ParameterError(f"{cls.__name__}: no value for {', '.join(missing)} (run the notebook's parameters cell first)")
        return cls(**{f.name: namespace[f.name] for f in dataclasses.fields(cls)})


@dataclass
class DataParams(Params):
    """Which OASST files, which language and which split: every stage that reads the trees declares these."""

    train_paths: list[str] = param(["data/oasst1_en_validation_messages.jsonl"], "split by tree into train / eval")
    heldout_paths: list[str] = param(["data/oasst_en_100_trees.jsonl"], "never trained on: evaluation only")
    lang: list[str] | None = param(["en"], "the trees' languages (None: all)")
    eval_fraction: float = param(0.1, "share of the training trees held out as the eval split")
    seed: int = param(0, "the seed of every random choice: the splits, sampling, initialisation")
    on_error: Literal["raise", "skip"] = param("raise", '"skip": skip bad records (counted, with the reason) instead of stopping')

    def load_split(self):
        """The trees, split by tree into train, eval and held-out (:func:`utils.oasst.load_split`)."""
        from utils.oasst import load_split

        return load_split(self.train_paths, self.heldout_paths, lang=self.lang, eval_fraction=self.eval_fraction,
                          seed=self.seed, on_error=self.on_error)


# ----------------------------------------------------------------------------------------------- types


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}s" if args else "a list"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an int", float: "a number", str: "a string", type(None): "null"}.get(annotation, str(annotation))


_SCALARS: dict[Any, Any] = {  # which values a scalar annotation takes (True is no int here, though Python says so)
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def fit(value: Any, annotation: Any, default: Any = None, key: str = "") -> Any:
    """``value`` as a field annotated ``annotation`` takes it (an int is a fine float, a dict is merged into the
    default's entries), or a one-line :class:`ParameterError` naming ``key``."""

    def wrong() -> ParameterError:
        return ParameterError(f"{key}: expected {_describe(annotation)} (the default is {default!r}), got {value!r}")

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own message says what was wrong ("layers[1]: expected an int")
            return fit(value, options[0], default, key)
        for option in options:
            try:
                return fit(value, option, default, key)
            except ParameterError:
                pass
        raise wrong()
    if origin is Literal:
        if value in args:
            return value
        raise ParameterError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
    if annotation in _SCALARS:
        if not _SCALARS[annotation](value):
            raise wrong()
        return float(value) if annotation is float else value  # an int is a fine float
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        return [fit(v, args[0], None, f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong()
        base = dict(default or {})
        unknown = sorted(set(value) - set(base)) if base else []
        if unknown:
            raise ParameterError(f"{key}: unknown entries {', '.join(map(str, unknown))} (it has: {', '.join(map(str, base))})")
        inner = args[1] if len(args) == 2 else Any
        return {**base, **{k: fit(v, inner, base.get(k), f"{key}.{k}") for k, v in value.items()}}
    raise ParameterError(f"{key}: a parameter annotated {annotation!r} cannot be set from a profile")


def defaults(cls: type) -> dict[str, Any]:
    """``{name: default}`` of a Params class, in the order of its fields."""
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
    return out


def fit_all(cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """The class's defaults with ``overrides`` fitted in (unknown keys are the caller's to report)."""
    hints, values = typing.get_type_hints(cls), defaults(cls)
    for key, value in overrides.items():
        values[key] = fit(value, hints[key], values[key], key)
    return values


# ----------------------------------------------------------------------------------------------- the cell


def _literal(value: Any) -> str:
    """A default as the cell writes it: Python's literal, strings in double quotes (as the notebooks always had)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float) and value and abs(value) < 1e-2:  # learning rates read as 2e-4, not 0.0002
        mantissa, exponent = f"{value:e}".split("e")
        text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        if float(text) == value:
            return text
    return repr(value)


def _wrapped(name: str, value: list | dict) -> str:
    """``name = [...]`` or ``{...}`` over as many lines as it takes to stay within :data:`CELL_WIDTH`, items aligned."""
    indent = " " * (len(name) + 4)
    items = [f"{_literal(k)}: {_literal(v)}" for k, v in value.items()] if isinstance(value, dict) else [_literal(v) for v in value]
    opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
    rows, row = [], ""
    for item in items:
        if row and len(indent) + len(row) + len(item) + 2 > CELL_WIDTH:
            rows.append(row + ",")
            row = ""
        row = f"{row}, {item}" if row else item
    rows.append(row + closing)
    return f"{name} = {opening}" + f"\n{indent}".join(rows)


def parameters_cell(cls: type, stage: str, source: str) -> str:
    """The notebook's parameters cell for ``cls``: the header, ``name = default  # help`` per field, then the
    runner's ``run_dir`` and ``out_dir`` (for the ``tiny`` profile's folder)."""
    lines = [CELL_HEADER.format(source=source)]
    for f in dataclasses.fields(cls):
        value = defaults(cls)[f.name]
        assignment = f"{f.name} = {_literal(value)}"
        help_text = f.metadata.get("help", "")
        if isinstance(value, (list, dict)) and len(assignment) > CELL_WIDTH:  # long: its help above, its items wrapped
            lines += [f"# {help_text}"] if help_text else []
            lines.append(_wrapped(f.name, value))
            continue
        lines.append(f"{assignment.ljust(COMMENT_COLUMN - 1)} # {help_text}" if help_text else assignment)
    lines += ['run_dir = "runs/tiny"', f'out_dir = "runs/tiny/{stage}"']
    return "\n".join(lines)
