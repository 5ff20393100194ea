"""Questions (Direct and CoT mode) and canonical answer texts of every task.

Questions state the image order, the index convention and, for boxes, the
0-1000 grid with x right and y down, so a model needs no outside convention.
Answers are exactly the formats of DESIGN.md; `score` parses the same forms.
"""

from __future__ import annotations

from collections.abc import Sequence

MODALITY_NAMES = {"ct": "CT slice", "mri": "MRI slice", "xray": "chest X-ray"}

COT_SUFFIX = (
    " First think step by step inside <think>...</think>, then give only the final answer "
    "inside <answer>...</answer>."
)
DIRECT_SUFFIX = " Reply with the answer only."

# The system prompt of each mode: `export` writes it for ms-swift's --system, `evaluate` sends it.
SYSTEM_PROMPTS = {
    "direct": (
        "You are an expert in medical image analysis. Each question shows one or more medical images "
        "and states its index and coordinate conventions. Answer exactly in the format the question asks "
        "for, with the answer only."
    ),
    "cot": (
        "You are an expert in medical image analysis. Each question shows one or more medical images "
        "and states its index and coordinate conventions. First reason step by step inside "
        "<think>...</think>, then give only the final answer, in the format the question asks for, inside "
        "<answer>...</answer>."
    ),
}


def _ordinal_list(n: int) -> str:
    return ", ".join(str(i) for i in range(2, n + 2))


def scale_question(modality: str, variant: str, n_crops: int, areas: Sequence[float]) -> str:
    """Hierarchical Scale Localization: tiers (`tier`) or boxes (`box`) of N crops."""
    name = MODALITY_NAMES[modality]
    level_text = " or ".join(
        f"Label {i + 1} (about {a:.2%} of the full image's area)" for i, a in enumerate(areas)
    )
    intro = (
        f"Image 1 is a full {name}. Images {_ordinal_list(n_crops)} are {n_crops} crops taken from it, "
        f"each with the full image's aspect ratio and all resized to the same size. "
        f"Each crop is {level_text}."
    )
    if variant == "tier":
        example = ", ".join(["Label 1", "Label 2", "Label 1", "Label 2"][i % 4] for i in range(n_crops))
        return (
            f"{intro} For each crop, in the order shown, say which label it is. "
            f"Answer with {n_crops} labels separated by commas, e.g. {example}."
        )
    example = ", ".join(["(x1, y1, x2, y2)"] * n_crops)
    return (
        f"{intro} For each crop, in the order shown, give its bounding box in the full image as "
        f"(x1, y1, x2, y2): integers on a 0-1000 grid over the full image, where (0, 0) is the "
        f"top-left corner, x grows to the right and y grows downward, and (x1, y1) is the box's "
        f"top-left and (x2, y2) its bottom-right corner. Answer with {n_crops} boxes separated by "
        f"commas: {example}."
    )


def jigsaw_question(modality: str, grid: int) -> str:
    """Topological Jigsaw Reconstruction of a grid x grid tiling."""
    name = MODALITY_NAMES[modality]
    n = grid * grid
    rows = " / ".join(" ".join(str(r * grid + c) for c in range(grid)) for r in range(grid))
    return (
        f"This {name} was cut into a {grid}x{grid} grid of tiles, numbered 0 to {n - 1} in the "
        f"original image from left to right and top to bottom ({rows}), and the tiles were "
        f"shuffled. For each tile position of the shown image, read from left to right and top "
        f"to bottom, give the original index of the tile now at that position. Answer with {n} "
        f"integers separated by spaces, e.g. {' '.join(str(i) for i in _example_perm(n))}."
    )


def _example_perm(n: int) -> list[int]:
    return [(i + 1) % n for i in range(n)]


def anomaly_question(modality: str, grid: int, cells: Sequence[int]) -> str:
    """Anomaly Consistency Detection on a grid x grid partition."""
    name = MODALITY_NAMES[modality]
    n = grid * grid
    cell_list = ", ".join(str(c) for c in cells)
    return (
        f"This {name} is divided into a {grid}x{grid} grid of equal cells, numbered 0 to {n - 1} "
        f"from left to right and top to bottom: cell k is in row k // {grid} and column k % {grid}, "
        f"both counted from 0 at the top-left. One of the central cells ({cell_list}) was replaced "
        f"by the same region of a different image. Which cell was replaced? Answer with the cell "
        f"index only, e.g. {cells[0]}."
    )


def with_mode(question: str, mode: str) -> str:
    """The question for `direct` or `cot` mode."""
    return question + (COT_SUFFIX if mode == "cot" else DIRECT_SUFFIX)


def tier_answer(levels: Sequence[int]) -> str:
    return ", ".join(f"Label {level}" for level in levels)


def box_answer(boxes: Sequence[Sequence[int]]) -> str:
    return ", ".join("({}, {}, {}, {})".format(*box) for box in boxes)


def jigsaw_answer(permutation: Sequence[int]) -> str:
    return " ".join(str(k) for k in permutation)


def anomaly_answer(cell: int) -> str:
    return str(cell)
