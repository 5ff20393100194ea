"""Recipes load strictly: unknown keys and wrong types are errors naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medscout_data.recipe import RecipeError, load_recipe


def test_shipped_recipes_load() -> None:
    paper = load_recipe("med-scout-bench")
    assert paper.pool.items_per_cell == 12000
    assert paper.pool.bench_per_cell == 1200
    assert paper.scale.n_crops == 3
    assert paper.scale.level_areas == (0.20, 0.0625)
    assert paper.jigsaw.grid == 2 and paper.anomaly.grid == 4
    assert paper.anomaly.cells == (5, 6, 9, 10)
    assert paper.index.model.startswith("hf-hub:microsoft/BiomedCLIP")
    sample = load_recipe("sample")
    assert sample.index.model == "pixels"
    assert sample.digest != paper.digest


def test_digest_is_stable_and_seed_sensitive() -> None:
    a, b = load_recipe("sample"), load_recipe("sample")
    assert a.digest == b.digest
    assert a.with_seed(a.seed + 1).digest != a.digest


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text('name = "t"\nseed = 1\n[pool]\nitems_per_cell = 10\nbench_per_cell = 2\n' + text)
    return path


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"scale\.crop_sise"):
        load_recipe(_write(tmp_path, "[scale]\ncrop_sise = 3\n"))
    with pytest.raises(RecipeError, match="colour"):
        load_recipe(_write(tmp_path, "[colour]\nx = 1\n"))


def test_wrong_type_and_bad_values_are_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"jigsaw\.grid must be int"):
        load_recipe(_write(tmp_path, '[jigsaw]\ngrid = "two"\n'))
    with pytest.raises(RecipeError, match=r"anomaly\.cells"):
        load_recipe(_write(tmp_path, "[anomaly]\ncells = [5, 99]\n"))
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(_write(tmp_path, "[scale\n"))


def test_missing_required_key(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('name = "t"\n[pool]\nitems_per_cell = 10\nbench_per_cell = 2\n')
    with pytest.raises(RecipeError, match="seed"):
        load_recipe(path)


def test_unknown_recipe_name_lists_known_ones() -> None:
    with pytest.raises(RecipeError, match="sample"):
        load_recipe("no-such-recipe")


def _number_fields(cls: type, seen: set[str] | None = None) -> set[str]:
    """`Class.field` of every number in the recipe tree (tuple elements included)."""
    import dataclasses
    import typing

    seen = set() if seen is None else seen
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint) if typing.get_origin(hint) is tuple else (hint,)
        for arg in args:
            if dataclasses.is_dataclass(arg):
                _number_fields(arg, seen)
            elif arg in (int, float):
                seen.add(f"{cls.__name__}.{name}")
    return seen


def test_every_number_in_a_recipe_has_a_range() -> None:
    from medscout_data.recipe import RANGES, Recipe

    assert _number_fields(Recipe) == set(RANGES)


# Where each `Class.field` lives in a recipe file (a window is an element of ingest.ct_windows).
TABLES = {
    "Recipe": "",
    "Window": "ingest",
    "SampleConfig": "sample",
    "PoolConfig": "pool",
    "IngestConfig": "ingest",
    "ScaleConfig": "scale",
    "JigsawConfig": "jigsaw",
    "AnomalyConfig": "anomaly",
    "IndexConfig": "index",
    "PngConfig": "png",
}


def _recipe_with(tmp_path: Path, spec: str, value: object) -> tuple[Path, str]:
    """The sample recipe with one number (every element of a tuple) set to `value`; the key named."""
    import tomllib

    from medscout_data.recipe import load_recipe as load
    from medscout_data.recipe import resolve_recipe_path

    data = tomllib.loads(resolve_recipe_path("sample").read_text())
    recipe = load("sample").to_dict()
    cls, name = spec.split(".")
    table = TABLES[cls]
    if cls == "Window":
        data.setdefault("ingest", {})["ct_windows"] = [{"name": "w", "width": 400.0, "level": 40.0}]
        data["ingest"]["ct_windows"][0][name] = value
        key = f"ingest.ct_windows[0].{name}"
    else:
        section = data if not table else data.setdefault(table, {})
        current = recipe[name] if not table else recipe[table][name]
        section[name] = [value] * len(current) if isinstance(current, tuple | list) else value
        key = f"{table}.{name}".lstrip(".") + ("[0]" if isinstance(current, tuple | list) else "")
    path = tmp_path / f"{spec}.toml"
    path.write_text(_toml(data))
    return path, key


def _toml(data: dict, prefix: str = "") -> str:
    import json

    def value(v: object) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and v != v:
            return "nan"
        return json.dumps(v)

    plain = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [
        f"\n[{prefix}{k}]\n" + _toml(v, f"{prefix}{k}.") for k, v in data.items() if isinstance(v, dict)
    ]
    return "\n".join(plain) + "\n" + "".join(tables)


def _ranges() -> list[tuple[str, float, float]]:
    from medscout_data.recipe import RANGES

    return [(spec, low, high) for spec, (low, high) in sorted(RANGES.items())]


def _naming(key: str) -> str:
    """A refusal naming `key` and its range."""
    return re.escape(key) + r" must be in \[.*\], got "


@pytest.mark.parametrize(("spec", "low", "high"), _ranges())
def test_a_number_just_outside_its_range_is_refused_naming_the_key(
    tmp_path: Path, spec: str, low: float, high: float
) -> None:
    is_int = isinstance(low, int) and isinstance(high, int)
    for value in (low - 1 if is_int else low - 0.5, high + 1 if is_int else high * 2 + 1):
        if is_int and not -(2**63) <= value < 2**63:
            continue  # beyond what TOML can hold
        path, key = _recipe_with(tmp_path, spec, value)
        with pytest.raises(RecipeError, match=_naming(key)):
            load_recipe(path)
    path, key = _recipe_with(tmp_path, spec, float("nan") if not is_int else low)
    if not is_int:
        with pytest.raises(RecipeError, match=_naming(key)):
            load_recipe(path)
