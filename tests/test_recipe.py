"""Recipes load strictly: unknown keys and wrong types are errors naming the key."""

from __future__ import annotations

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
