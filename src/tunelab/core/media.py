"""Images in dataset rows: content parts and ``<image>`` placeholders -> canonical text + image references.

A canonical multimodal example is the usual ``{"messages": [...]}`` whose string contents hold one ``<image>``
placeholder per image, plus ``"images": [ref, ...]`` in placeholder order. A ref is an absolute file path or a
``data:`` URL. Two input layouts are accepted:
- OpenAI-style content parts: ``{"type": "text", "text": ...}``, ``{"type": "image_url", "image_url": {"url": ...}}``
  or ``{"type": "image", "image"|"path"|"url": ...}``;
- the LLaMA-Factory mllm layout: ``<image>`` in the text and an ``images`` column.
Relative paths resolve against the dataset file's folder; ``file://`` URLs and data URLs / raw base64 work too.
Pure Python (Pillow only to check that an image opens).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

IMAGE_PLACEHOLDER = "<image>"
IMAGES_COLUMN = "images"
_MESSAGE_KEYS = ("messages", "conversations", "prompt")
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]{64,}$")


def has_media(record: Any) -> bool:
    """Whether a raw row carries images (an ``images`` column or image content parts)."""
    if not isinstance(record, dict):
        return False
    if record.get(IMAGES_COLUMN):
        return True
    return any(_has_parts(record.get(key)) for key in _MESSAGE_KEYS)


def _has_parts(turns: Any) -> bool:
    """Whether any message has an image content part (text-only typed parts are the converters' business)."""
    return isinstance(turns, list) and any(
        isinstance(t, dict) and isinstance(t.get("content"), list)
        and any(isinstance(part, dict) and part.get("type") in ("image_url", "image") for part in t["content"])
        for t in turns
    )


def flatten_parts(record: dict, base: Path | None) -> tuple[dict, list[str]]:
    """The row with content-part lists turned into placeholder text, and its image refs in order."""
    images: list[str] = []
    out = dict(record)
    for key in _MESSAGE_KEYS:
        turns = record.get(key)
        if not _has_parts(turns):
            continue
        flat = []
        for index, turn in enumerate(turns or [], 1):
            content = turn.get("content") if isinstance(turn, dict) else None
            if isinstance(content, list):
                turn = {**turn, "content": _join_parts(content, index, images, base)}
            flat.append(turn)
        out[key] = flat
    column = record.get(IMAGES_COLUMN)
    if column:
        if images:
            raise ValueError("give images either as content parts or in the 'images' column, not both")
        if isinstance(column, str):
            column = [column]
        if not isinstance(column, list) or not all(isinstance(c, str) for c in column):
            raise ValueError("column 'images' must be a list of image paths or data URLs")
        images = [resolve_ref(c, base) for c in column]
    out.pop(IMAGES_COLUMN, None)
    return out, images


def _join_parts(parts: list, message: int, images: list[str], base: Path | None) -> str:
    text = []
    for number, part in enumerate(parts, 1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            text.append(part["text"])
        elif kind in ("image_url", "image"):
            ref = image_ref_of(part)
            if ref is None:
                raise ValueError(f"message {message} part {number}: an image part without a url or path")
            images.append(resolve_ref(ref, base))
            text.append(IMAGE_PLACEHOLDER)
        else:
            raise ValueError(f"message {message} part {number}: type {kind!r} is not one of text, image_url, image")
    return "".join(text)


def image_ref_of(part: dict) -> str | None:
    """The url/path string of an image content part (OpenAI ``image_url`` or a plain ``image`` part)."""
    value = part.get("image_url", part.get("image", part.get("path", part.get("url"))))
    if isinstance(value, dict):
        value = value.get("url") or value.get("path")
    return value if isinstance(value, str) and value else None


def resolve_ref(ref: str, base: Path | None) -> str:
    """An absolute path or a data URL for an image reference (relative paths: against ``base``)."""
    ref = ref.strip()
    if ref.startswith("data:"):
        return ref
    if ref.startswith("file://"):
        return str(Path(unquote(urlparse(ref).path)))
    if ref.startswith(("http://", "https://")):
        raise ValueError(f"image {ref[:80]!r}: remote URLs are not fetched; download the image and give its path")
    if _BASE64.match(ref) and not Path(ref).suffix:
        return "data:image/png;base64," + "".join(ref.split())
    path = Path(ref).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path.resolve())


def image_bytes(ref: str) -> bytes:
    """The encoded bytes of an image ref; ValueError naming the ref when it cannot be read."""
    if ref.startswith("data:"):
        header, _, payload = ref.partition(",")
        try:
            return base64.b64decode(payload, validate=False) if ";base64" in header else unquote(payload).encode("latin-1")
        except (binascii.Error, ValueError):
            raise ValueError(f"image {ref[:40]}...: invalid base64 data") from None
    try:
        return Path(ref).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"image {ref}: no such file") from None
    except OSError as exc:
        raise ValueError(f"image {ref}: cannot be read ({exc.strerror})") from None


def load_image(ref: str) -> Any:
    """The image as an RGB PIL image; ValueError naming the ref when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    data = image_bytes(ref)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError):
        shown = ref if not ref.startswith("data:") else ref[:40] + "..."
        raise ValueError(f"image {shown}: not a readable image") from None
    return image.convert("RGB")


def count_placeholders(messages: list[dict]) -> int:
    """How many ``<image>`` placeholders the conversation's text holds."""
    return sum(str(m.get("content", "")).count(IMAGE_PLACEHOLDER) for m in messages)


def attach_images(example: dict, images: list[str], check: bool = True) -> dict:
    """The canonical example with its images, after checking the placeholder count and that each image opens."""
    placeholders = count_placeholders(example.get("messages", []))
    if placeholders != len(images):
        raise ValueError(f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(images)} image(s)")
    if check:
        for ref in images:
            load_image(ref)
    return {**example, "images": images}


def convert_media_row(record: Any, spec: Any, base: Path | None) -> dict:
    """convert_row for rows that may carry images: content parts/placeholders checked, images attached."""
    from tunelab.core.datasets import convert_row

    if not has_media(record):
        return convert_row(record, spec)
    flat, images = flatten_parts(record, base)
    return attach_images(convert_row(flat, spec), images)


IMAGE_PART_TYPES = ("image_url", "image")


def split_images(messages: list[dict]) -> tuple[list[dict], list[str]]:
    """Chat messages whose contents may be content parts -> the same messages with text contents (one ``<image>`` per
    image part, in order) and their image refs; ValueError names the message and part."""
    flat: list[dict] = []
    refs: list[str] = []
    for number, message in enumerate(messages, 1):
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": _join_parts(content, number, refs, None)}
        flat.append(message)
    return flat, refs


def user_message(text: str, images: list[str] | None = None) -> dict:
    """A user chat message: plain text, or one image part per picture path (in order) followed by the text."""
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict] = [{"type": "image", "path": str(Path(image).expanduser().resolve())} for image in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def has_images(messages: list[dict]) -> bool:
    """Whether any message holds an image content part."""
    return _has_parts(messages)


def inline_images(messages: list[dict]) -> list[dict]:
    """The messages with every image part as an OpenAI ``image_url`` part holding a data URL (for a server that cannot
    read this machine's files)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": [_inlined(part) for part in content]}
        out.append(message)
    return out


def _inlined(part: Any) -> Any:
    if not (isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES):
        return part
    ref = image_ref_of(part)
    if ref is None:
        raise ValueError("an image part without a url or path")
    return {"type": "image_url", "image_url": {"url": data_url(resolve_ref(ref, None))}}


def data_url(ref: str) -> str:
    """A ``data:`` URL holding the image ``ref`` (a path or already a data URL); ValueError when it is no image."""
    if ref.startswith("data:"):
        return ref
    from PIL import Image, UnidentifiedImageError

    data = image_bytes(ref)
    try:
        kind = Image.open(io.BytesIO(data)).format
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"image {ref}: not a readable image") from None
    mime = Image.MIME.get(kind or "", "image/png")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


_PARTS_PRELUDE = """{%- set tl_chat = namespace(messages=[]) -%}
{%- for tl_m in messages -%}
{%- if tl_m.content is string or tl_m.content is none -%}
{%- set tl_chat.messages = tl_chat.messages + [tl_m] -%}
{%- else -%}
{%- set tl_text = namespace(value='') -%}
{%- for tl_p in tl_m.content -%}
{%- if tl_p.type == 'text' -%}{%- set tl_text.value = tl_text.value + tl_p.text -%}
{%- elif tl_p.type in ['image', 'image_url'] -%}{%- set tl_text.value = tl_text.value + IMAGE_TEXT -%}
{%- endif -%}
{%- endfor -%}
{%- set tl_chat.messages = tl_chat.messages + [dict(tl_m, content=tl_text.value)] -%}
{%- endif -%}
{%- endfor -%}
{%- set messages = tl_chat.messages -%}
"""


def image_chat_template(jinja: str, image_text: str) -> str:
    """A chat template for text contents made to take content parts too (transformers' and vLLM's image messages):
    each image part becomes ``image_text`` (what the processor expands), text parts are joined, as in training."""
    return _PARTS_PRELUDE.replace("IMAGE_TEXT", json.dumps(image_text)) + jinja
