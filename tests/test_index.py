"""The X-ray reference index: specs, embedding cache, subject-disjoint FAISS search, outputs.

Catalogues here are written by the tests themselves (CATALOGUE_SCHEMA rows and
cache stacks), so nothing depends on the ingest stage.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from medscout_data.cache import save_stack
from medscout_data.cli import cli
from medscout_data.layout import Layout
from medscout_data.recipe import Recipe, load_recipe
from medscout_data.schema import CATALOGUE_SCHEMA
from medscout_data.stages.embedders import ModelSpec, ModelSpecError, parse_model_spec
from medscout_data.stages.embeddings import EmbeddingStore
from medscout_data.stages.index import (
    NEIGHBOUR_SCHEMA,
    IndexMismatch,
    IndexOptions,
    index_catalogue,
    load_neighbours,
    neighbours_metadata,
)
from medscout_data.stages.plan import SubjectPlan
from medscout_data.stages.search import SearchConfig, ivf_lists, search_side

BENCH_SUBJECTS = ("s1", "s2")
TRAIN_SUBJECTS = ("s3", "s4", "s5", "s6")


# ----------------------------------------------------------------------------- fixtures


def smooth_image(rng: np.random.Generator, height: int = 48, width: int = 40) -> np.ndarray:
    """A random smooth 8-bit image: distinct structure at thumbnail scale."""
    coarse = rng.random((6, 5)).astype(np.float32)
    return np.round(
        cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255
    ).astype(np.uint8)


def xray_images(seed: int = 0) -> dict[str, tuple[str, np.ndarray]]:
    """image_id -> (subject, pixels), with planted duplicates.

    - `s2-dup`   (bench) is an exact copy of `s1-0`: s1-0's top-1 must be it.
    - `s3-dup`   (train) is an exact copy of `s1-1`: across the partition, never returned.
    - `s4-twin`  is `s4-0` plus a little noise: same subject, never returned.
    """
    rng = np.random.default_rng(seed)
    images = {}
    for subject in BENCH_SUBJECTS + TRAIN_SUBJECTS:
        for n in range(3):
            images[f"{subject}-{n}"] = (subject, smooth_image(rng))
    images["s2-dup"] = ("s2", images["s1-0"][1].copy())
    images["s3-dup"] = ("s3", images["s1-1"][1].copy())
    noise = rng.integers(-2, 3, images["s4-0"][1].shape)
    images["s4-twin"] = ("s4", (images["s4-0"][1] + noise).clip(0, 255).astype(np.uint8))
    return images


def catalogue_row(image_id: str, subject: str, image: np.ndarray, cache_file: str, index: int) -> dict:
    return {
        "image_id": image_id,
        "modality": "xray",
        "source_kind": "mimic-cxr-jpg",
        "subject_id": subject,
        "source_id": image_id,
        "study_id": "s" + subject,
        "path": f"files/p1/p{subject}/s1/{image_id}.jpg",
        "plane": "",
        "slice_index": -1,
        "z_mm": 0.0,
        "pixel_spacing_mm": 0.5,
        "slice_spacing_mm": 0.0,
        "window": "",
        "view": "PA",
        "official_split": "train",
        "body_fraction": float((image > 20).mean()),
        "height": image.shape[0],
        "width": image.shape[1],
        "cache_file": cache_file,
        "mask_file": cache_file.replace(".npy", "-mask.npy"),
        "cache_index": index,
        "meta": "{}",
    }


def write_xray_catalogue(layout: Layout, images: dict[str, tuple[str, np.ndarray]], name: str = "c0") -> None:
    """A catalogue and one padded cache stack (+ masks) holding `images`, as ingest lays them out."""
    cache = layout.cache_dir("xray")
    height = max(a.shape[0] for _, a in images.values())
    width = max(a.shape[1] for _, a in images.values())
    stack = np.zeros((len(images), height, width), np.uint8)
    rows = []
    for index, (image_id, (subject, image)) in enumerate(images.items()):
        stack[index, : image.shape[0], : image.shape[1]] = image
        rows.append(catalogue_row(image_id, subject, image, f"{name}.npy", index))
    save_stack(cache / f"{name}.npy", stack)
    save_stack(cache / f"{name}-mask.npy", stack > 20)
    path = layout.catalogue("xray")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=CATALOGUE_SCHEMA), path)


def write_plan(layout: Layout, recipe: Recipe) -> SubjectPlan:
    plan = SubjectPlan(
        modality="xray",
        seed=recipe.seed,
        recipe=recipe.name,
        bench_fraction=recipe.pool.bench_fraction,
        bench=frozenset(BENCH_SUBJECTS),
        train=frozenset(TRAIN_SUBJECTS),
    )
    path = layout.plan("xray")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan.to_dict()))
    return plan


def small_recipe(k: int = 3, search: str = "exact") -> Recipe:
    recipe = load_recipe("sample")
    return dataclasses.replace(recipe, index=dataclasses.replace(recipe.index, k=k, search=search))


@pytest.fixture
def indexed(tmp_path: Path) -> tuple[Layout, Recipe, SubjectPlan, dict]:
    layout = Layout.at(tmp_path / "shards")
    recipe = small_recipe()
    images = xray_images()
    write_xray_catalogue(layout, images)
    plan = write_plan(layout, recipe)
    return layout, recipe, plan, images


def run_index(layout: Layout, recipe: Recipe, **overrides) -> Path:
    options = IndexOptions.from_recipe(recipe, device="cpu", **overrides)
    return index_catalogue(layout, recipe, "xray", options)


def report(path: Path) -> dict:
    return json.loads((path.parent / "report.json").read_text())


# ----------------------------------------------------------------------------- model specs


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("pixels", ModelSpec("pixels")),
        (
            "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            ModelSpec("hf-hub", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"),
        ),
        ("local-dir:/models/biomedclip", ModelSpec("local-dir", "/models/biomedclip")),
        ("ViT-B-32/laion2b_s34b_b79k", ModelSpec("open_clip", "ViT-B-32", "laion2b_s34b_b79k")),
        ("ViT-B-32", ModelSpec("open_clip", "ViT-B-32")),
    ],
)
def test_model_specs_parse_to_values_and_back(text: str, spec: ModelSpec) -> None:
    assert parse_model_spec(text) == spec
    assert spec.text == text
    assert parse_model_spec(spec.text) == spec


@pytest.mark.parametrize("text", ["", "hf-hub:", "local-dir:", "hf-hub:no-slash", "a/b/c", "ViT:B"])
def test_bad_model_specs_are_refused(text: str) -> None:
    with pytest.raises(ModelSpecError):
        parse_model_spec(text)


def test_local_dir_spec_resolves_to_an_absolute_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = parse_model_spec("local-dir:weights").resolved()
    assert spec == ModelSpec("local-dir", str(tmp_path / "weights"))


def test_builtin_name_without_tag_is_refused_not_random_weights() -> None:
    pytest.importorskip("open_clip")
    from medscout_data.stages.embedders import resolve_model

    with pytest.raises(ModelSpecError, match="laion2b_s34b_b79k"):
        resolve_model(parse_model_spec("ViT-B-32"))


# ----------------------------------------------------------------------------- search


def brute_force(vectors: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Reference: the k best rows of other groups by inner product, with numpy."""
    scores = vectors @ vectors.T
    scores[groups[:, None] == groups[None, :]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    order[np.take_along_axis(scores, order, 1) == -np.inf] = -1
    return order


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_exact_search_matches_brute_force_and_skips_the_own_group() -> None:
    rng = np.random.default_rng(1)
    vectors = unit_rows(rng, 300, 24)
    groups = rng.integers(0, 40, 300)
    labels, scores, _ = search_side(vectors, groups, 5, SearchConfig("exact"))
    np.testing.assert_array_equal(labels, brute_force(vectors, groups, 5))
    assert np.all(groups[labels] != groups[:, None])
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_a_group_larger_than_the_search_depth_is_searched_deeper() -> None:
    """Group 0 is a tight cluster of 30 rows; the first pass (depth 4) sees only its own rows."""
    rng = np.random.default_rng(2)
    centre = unit_rows(rng, 1, 16)
    cluster = centre + 0.01 * rng.standard_normal((30, 16)).astype(np.float32)
    vectors = np.concatenate([cluster, unit_rows(rng, 50, 16)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    groups = np.concatenate([np.zeros(30, int), 1 + np.arange(50) // 5])
    labels, _, params = search_side(vectors, groups, 3, SearchConfig("exact", max_depth=4))
    assert params["exact_fallback_queries"] >= 30
    np.testing.assert_array_equal(labels, brute_force(vectors, groups, 3))


def test_fewer_candidates_than_k_gives_what_exists() -> None:
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng, 5, 8)
    groups = np.array([0, 0, 0, 1, 1])
    labels, scores, _ = search_side(vectors, groups, 4, SearchConfig("exact"))
    assert list((labels >= 0).sum(axis=1)) == [2, 2, 2, 3, 3]
    assert np.isnan(scores[0, 2:]).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_search_agrees_with_exact_on_an_easy_case(kind: str) -> None:
    """1000 pairs of near-duplicates in different groups: every top-1 is the partner."""
    rng = np.random.default_rng(4)
    base = unit_rows(rng, 1000, 32)
    twins = base + 0.02 * rng.standard_normal(base.shape).astype(np.float32)
    vectors = np.concatenate([base, twins / np.linalg.norm(twins, axis=1, keepdims=True)])
    groups = np.concatenate([np.arange(1000), 1000 + np.arange(1000)])
    exact, _, _ = search_side(vectors, groups, 4, SearchConfig("exact"))
    approx, _, params = search_side(vectors, groups, 4, SearchConfig(kind))
    partner = np.concatenate([np.arange(1000, 2000), np.arange(1000)])
    np.testing.assert_array_equal(exact[:, 0], partner)
    np.testing.assert_array_equal(approx[:, 0], exact[:, 0])
    assert (approx >= 0).all()
    if kind == "ivf":
        assert params["nlist"] == ivf_lists(2000) > 1


# ----------------------------------------------------------------------------- the stage


def test_duplicate_of_another_subject_is_top1_and_forbidden_neighbours_never_appear(indexed) -> None:
    layout, recipe, plan, images = indexed
    path = run_index(layout, recipe)
    table = pq.read_table(path)
    assert table.schema.remove_metadata() == NEIGHBOUR_SCHEMA
    rows = table.to_pylist()
    assert {r["image_id"] for r in rows} == set(images)
    for row in rows:
        assert row["neighbour_id"] != row["image_id"]
        assert row["neighbour_subject_id"] != row["subject_id"]
        assert images[row["neighbour_id"]][0] == row["neighbour_subject_id"]
        assert plan.side(row["neighbour_subject_id"]) == plan.side(row["subject_id"])
    top1 = {r["image_id"]: r for r in rows if r["rank"] == 1}
    assert top1["s1-0"]["neighbour_id"] == "s2-dup"
    assert top1["s1-0"]["score"] == pytest.approx(1.0, abs=1e-5)
    assert top1["s2-dup"]["neighbour_id"] == "s1-0"
    assert all(r["neighbour_id"] != "s3-dup" for r in rows if r["image_id"] == "s1-1")
    assert all(r["neighbour_id"] != "s4-twin" for r in rows if r["image_id"] == "s4-0")
    ranks = [r["rank"] for r in rows if r["image_id"] == "s5-1"]
    assert ranks == [1, 2, 3]


def test_outputs_record_what_made_them(indexed) -> None:
    layout, recipe, plan, _ = indexed
    path = run_index(layout, recipe)
    assert path == layout.index_dir("xray", "pixels") / "neighbours.parquet"
    meta = neighbours_metadata(path)
    assert meta["model"] == "pixels"
    assert meta["embedding_dim"] == "1024"
    assert meta["search"] == "exact"
    assert meta["k"] == "3"
    assert meta["plan_sha256"] == plan.digest
    assert len(meta["catalogue_sha256"]) == 64
    info = json.loads((path.parent / "index.json").read_text())
    assert info["model"] == "pixels" and info["plan_sha256"] == plan.digest
    assert info["counts"]["embedded"] == len(xray_images())
    neighbours = load_neighbours(path, model="pixels")
    assert neighbours["s1-0"][0][:2] == ("s2-dup", "s2")
    assert len(load_neighbours(path, max_rank=1)["s5-0"]) == 1


def test_cached_embeddings_are_reused_and_only_new_images_embedded(indexed) -> None:
    layout, recipe, _, images = indexed
    first = run_index(layout, recipe)
    assert report(first)["counts"]["embedded"] == len(images)
    stamp = first.stat().st_mtime_ns
    assert run_index(layout, recipe) == first
    assert first.stat().st_mtime_ns == stamp  # current: nothing redone

    again = run_index(layout, recipe, k=2)  # stale neighbours, same embeddings
    counts = report(again)["counts"]
    assert counts.get("embedded", 0) == 0
    assert counts["embeddings_reused"] == len(images)

    rng = np.random.default_rng(9)
    grown = {**images, "s5-new1": ("s5", smooth_image(rng)), "s6-new2": ("s6", smooth_image(rng))}
    write_xray_catalogue(layout, grown, name="c1")
    counts = report(run_index(layout, recipe, k=2))["counts"]
    assert counts["embedded"] == 2
    assert counts["embeddings_reused"] == len(images)
    assert "s5-new1" in load_neighbours(again)


def test_changed_pixels_of_an_image_are_embedded_again(indexed) -> None:
    layout, recipe, _, images = indexed
    run_index(layout, recipe)
    subject, image = images["s6-2"]
    changed = {**images, "s6-2": (subject, cv2.resize(image, (36, 44)))}
    write_xray_catalogue(layout, changed, name="c1")
    assert report(run_index(layout, recipe))["counts"]["embedded"] == 1


def test_unreadable_image_is_recorded_and_the_run_goes_on(indexed) -> None:
    layout, recipe, _, _ = indexed
    table = pq.read_table(layout.catalogue("xray")).to_pylist()
    table[0]["cache_index"] = 999
    pq.write_table(pa.Table.from_pylist(table, schema=CATALOGUE_SCHEMA), layout.catalogue("xray"))
    path = run_index(layout, recipe)
    errors = pq.read_table(path.parent / "errors.parquet").to_pylist()
    assert [e["reason"] for e in errors] == ["unreadable_image"]
    assert table[0]["path"] in errors[0]["message"] and "999" in errors[0]["message"]
    ids = set(pq.read_table(path)["image_id"].to_pylist())
    assert table[0]["image_id"] not in ids and len(ids) == len(table) - 1


def test_every_search_kind_finds_the_planted_duplicate(indexed) -> None:
    layout, recipe, _, _ = indexed
    for kind in ("ivf", "hnsw"):
        path = run_index(layout, recipe, search=kind)
        assert neighbours_metadata(path)["search"] == kind
        assert load_neighbours(path)["s1-0"][0][0] == "s2-dup"


def test_embedding_store_of_another_model_is_dropped_not_mixed(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    a = {"model": "pixels", "weights": "a", "dim": 2, "preprocess": {}}
    store = EmbeddingStore(folder, a)
    store.append(["x", "y"], ["k1", "k2"], np.eye(2, dtype=np.float32))
    assert len(EmbeddingStore(folder, a)) == 2
    np.testing.assert_array_equal(EmbeddingStore(folder, a).vectors(["y", "x"]), [[0, 1], [1, 0]])
    assert len(EmbeddingStore(folder, {**a, "weights": "b"})) == 0


def test_neighbours_of_another_model_are_refused(indexed) -> None:
    layout, recipe, _, _ = indexed
    path = run_index(layout, recipe)
    with pytest.raises(IndexMismatch, match="pixels"):
        load_neighbours(path, model="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")


def test_ct_has_no_index(indexed) -> None:
    layout, recipe, _, _ = indexed
    with pytest.raises(Exception, match="X-ray only"):
        index_catalogue(layout, recipe, "ct", IndexOptions.from_recipe(recipe))


def test_cli_help_lists_the_options() -> None:
    result = CliRunner().invoke(cli, ["index", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--device", "--batch-size", "--k", "--search", "--root", "--out"):
        assert option in result.output


def test_cli_runs_ingest_then_index_on_the_sample(tmp_path: Path) -> None:
    ingest = pytest.importorskip("medscout_data.sources")
    if not hasattr(ingest, "ensure_catalogue"):
        pytest.skip("the ingest stage has no ensure_catalogue yet")
    out = tmp_path / "shards"
    result = CliRunner().invoke(cli, ["index", "--modality", "xray", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    path = Layout.at(out).index_dir("xray", "pixels") / "neighbours.parquet"
    assert str(path) in result.output
    table = pq.read_table(path).to_pylist()
    assert table and all(r["neighbour_subject_id"] != r["subject_id"] for r in table)
