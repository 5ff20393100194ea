"""An item's chat messages: the one prompt every path sends (pure, no I/O).

`item_messages` gives the system prompt of the mode (`prompts.SYSTEM_PROMPTS`,
as it is: no trailing newline), then one user turn holding every image in
prompt order and then the question of the mode. How an image is written
differs per tool (a PNG data URL for `evaluate`, a PIL image for lmms-eval, a
file path for VLMEvalKit, an `<image>` tag plus a path for ms-swift), so the
caller says that with `image_part`; the text parts are the same everywhere.

`evaluate`, the ms-swift JSONL (`export`), the lmms-eval task and the
VLMEvalKit class all build their messages here, so a model answering
greedily sees the same prompt, byte for byte, whatever the path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from medscout_data.tasks.prompts import SYSTEM_PROMPTS

MODES = ("direct", "cot")
IMAGE_TAG = "<image>"  # ms-swift's placeholder for one image in a text turn

T = TypeVar("T")


def system_prompt(mode: str) -> str:
    """The system prompt of `direct` or `cot` mode, exactly as sent."""
    if mode not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    return SYSTEM_PROMPTS[mode]


def question_of(row: Mapping[str, Any], mode: str) -> str:
    """The Direct (`question`) or CoT (`question_cot`) question of an item row."""
    system_prompt(mode)  # the same error for an unknown mode
    return row["question_cot"] if mode == "cot" else row["question"]


def text_part(text: str) -> dict[str, str]:
    """An OpenAI-style text content part."""
    return {"type": "text", "text": text}


def item_messages(
    question: str, images: Iterable[T], mode: str, image_part: Callable[[T], dict[str, Any]]
) -> list[dict[str, Any]]:
    """[system prompt of the mode, user turn: `image_part(image)` for each image in order, then the
    question], in OpenAI chat form (`content` a string for the system turn, a part list for the user)."""
    parts = [image_part(image) for image in images]
    return [
        {"role": "system", "content": system_prompt(mode)},
        {"role": "user", "content": [*parts, text_part(question)]},
    ]


def row_messages(
    row: Mapping[str, Any], mode: str, image_part: Callable[[Any], dict[str, Any]]
) -> list[dict[str, Any]]:
    """`item_messages` of an item row (its `images` column and the question of the mode)."""
    return item_messages(question_of(row, mode), row["images"], mode, image_part)


def tagged_messages(messages: Sequence[Mapping[str, Any]], tag: str = IMAGE_TAG) -> list[dict[str, str]]:
    """The messages with text-only content: each image part becomes `tag`, text parts are joined as
    they are. This is ms-swift's dataset form, and what its server makes of an OpenAI request
    (so a JSONL row and a request of the same item reach the template as the same text)."""
    out = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = "".join(part["text"] if part["type"] == "text" else tag for part in content)
        out.append({"role": message["role"], "content": content})
    return out
