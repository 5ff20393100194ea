"""Comparing the prompts of different paths: messages reduced to what a model reads.

Each path writes images its own way (a PNG data URL, a file path, a PIL image,
an `<image>` tag); `canonical` turns OpenAI-style messages into
[(role, [text or ("image", mode, size, pixel md5)])], so two paths agree when the
texts are equal byte for byte and the images carry the same pixels.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image


def pixels(image: Image.Image | bytes) -> tuple[str, str, tuple[int, int], str]:
    """("image", mode, size, md5 of the pixels) of a PIL image or encoded image bytes."""
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    image.load()
    return ("image", image.mode, tuple(image.size), hashlib.md5(image.tobytes()).hexdigest())


def data_url_pixels(url: str) -> tuple[str, str, tuple[int, int], str]:
    """`pixels` of a `data:image/...;base64,` URL (any lossless format)."""
    head, _, payload = url.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64"), head
    return pixels(base64.b64decode(payload))


def canonical(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Any]]]:
    """OpenAI chat messages (string content or parts with `text` / `image_url`) in a comparable form."""
    out = []
    for message in messages:
        content = message["content"]
        parts: list[Any] = []
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if part["type"] == "text":
                parts.append(part["text"])
            else:
                assert part["type"] == "image_url", part
                parts.append(data_url_pixels(part["image_url"]["url"]))
        out.append((message["role"], parts))
    return out


def canonical_request(body: bytes | str) -> str:
    """A recorded chat request body as canonical JSON text: its messages (canonical form), model
    settings that change an answer (temperature, max tokens) beside them."""
    request = json.loads(body)
    keep = {"temperature": float(request.get("temperature", 1.0)), "max_tokens": request.get("max_tokens")}
    return json.dumps({"messages": canonical(request["messages"]), **keep}, sort_keys=True)
