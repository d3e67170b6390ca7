"""A stage's defaults are written once, in its Params dataclass: the notebook's cell is generated from it, profiles are
checked against its annotations, and no other dataclass of the stage's package writes a default of the same name."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
from typing import Literal

import pytest

from utils import params as stage_params
from utils.pipeline import repo
from utils.pipeline.notebook_params import ParameterError, effective_parameters, notebook_defaults, parameters_cell
from utils.pipeline.stages import PARAMS, REWARD, SFT, notebook_path, params_class

MIGRATED = sorted(PARAMS)


@pytest.mark.parametrize("stage", MIGRATED)
def test_the_notebooks_parameters_cell_is_the_one_generated_from_params(stage):
    assert parameters_cell(notebook_path(stage)) == repo.generated_parameters_cell(stage), \
        f"{stage}: the parameters cell differs from {PARAMS[stage][0]}: run python -m utils.pipeline.repo sync"
    defaults = {k: v for k, v in notebook_defaults(notebook_path(stage)).items() if k not in ("run_dir", "out_dir")}
    assert defaults == stage_params.defaults(params_class(stage))  # what papermill and the runner read is Params' values


@pytest.mark.parametrize("stage", MIGRATED)
def test_every_parameter_has_help_and_no_other_dataclass_of_the_package_writes_a_default_of_its_name(stage):
    cls = params_class(stage)
    assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), "every parameter explains itself in the cell"
    names = {f.name for f in dataclasses.fields(cls)}
    package = importlib.import_module(PARAMS[stage][0].rsplit(".", 1)[0])
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        for _, other in inspect.getmembers(module, dataclasses.is_dataclass):
            if other is cls or issubclass(cls, other) or other.__module__ != module.__name__:
                continue
            twice = sorted(f.name for f in dataclasses.fields(other) if f.name in names
                           and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING))
            assert not twice, f"{other.__module__}.{other.__qualname__} writes defaults of {cls.__name__}'s {twice}"


@dataclasses.dataclass
class Example(stage_params.Params):
    count: int = stage_params.param(3, "an int")
    rate: float = stage_params.param(0.5, "a float")
    maybe: int | None = stage_params.param(None, "None: off")
    layers: list[int] | None = stage_params.param([4, 5], "None: all")
    mode: Literal["group", "flat"] = stage_params.param("group", "a choice")
    name_or_names: str | list[str] = stage_params.param("a", "a string or a list")
    table: dict[str, int] = stage_params.param({"x": 1, "y": 2}, "a mapping")


@pytest.mark.parametrize("key, value, expected", [
    ("count", 4, 4), ("rate", 1, 1.0), ("maybe", None, None), ("maybe", 7, 7), ("layers", None, None), ("layers", [1], [1]),
    ("mode", "flat", "flat"), ("name_or_names", ["a", "b"], ["a", "b"]), ("name_or_names", "z", "z"),
    ("table", {"y": 5}, {"x": 1, "y": 5}),
])
def test_a_value_fits_its_annotation(key, value, expected):
    assert stage_params.fit_all(Example, {key: value})[key] == expected


@pytest.mark.parametrize("key, value, message", [
    ("count", "3", r"count: expected an int \(the default is 3\), got '3'"),
    ("count", True, "count: expected an int"),
    ("count", None, "count: expected an int"),
    ("rate", "fast", "rate: expected a number"),
    ("layers", [1, "2"], r"layers\[1\]: expected an int"),
    ("mode", "grup", "mode: 'grup' is not one of group, flat"),
    ("table", {"z": 1}, r"table: unknown entries z \(it has: x, y\)"),
])
def test_a_value_that_does_not_fit_is_one_line_naming_the_key(key, value, message):
    with pytest.raises(ParameterError, match=message):
        stage_params.fit_all(Example, {key: value})


def test_the_generated_cell_is_what_papermill_reads(tmp_path):
    text = stage_params.parameters_cell(Example, "09_example", "tests/test_params.py (Example)")
    namespace: dict = {}
    exec(text, namespace)  # an ordinary cell: name = literal lines and comments
    assert {k: namespace[k] for k in stage_params.defaults(Example)} == stage_params.defaults(Example)
    assert namespace["out_dir"] == "runs/tiny/09_example"
    assert "count = 3" in text and "# an int" in text
    assert Example.from_namespace(namespace) == Example()
    with pytest.raises(ParameterError, match="Example: no value for count"):
        Example.from_namespace({})


def test_a_profile_value_for_a_migrated_stage_is_checked_by_the_annotation():
    stage = REWARD
    cls = params_class(stage)
    nullable = next(f.name for f in dataclasses.fields(cls) if f.name == "max_train_pairs")
    assert effective_parameters(notebook_path(stage), {nullable: 64})[nullable] == 64
    with pytest.raises(ParameterError, match="pair_weighting: 'pairs' is not one of group, flat"):
        effective_parameters(notebook_path(stage), {"pair_weighting": "pairs"})
    with pytest.raises(ParameterError, match="lora_layers: expected"):
        effective_parameters(notebook_path(stage), {"lora_layers": "top"})
    json.dumps(effective_parameters(notebook_path(stage), {}))  # what the run records
    tiny = effective_parameters(notebook_path(SFT), {"tiny_base": {"steps": 5}})["tiny_base"]  # a mapping: merged into the default
    assert tiny["steps"] == 5 and tiny["vocab_size"] == 4096
    with pytest.raises(ParameterError, match="tiny_base: unknown entries layers"):
        effective_parameters(notebook_path(SFT), {"tiny_base": {"layers": 2}})
