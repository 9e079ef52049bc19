"""Entries of a LLaMA-Factory ``dataset_info.json``, read as they are, translated to tunelab dataset specs.

Keys understood: file_name (a file or a folder of files), hf_hub_url, subset, split, folder, num_samples,
formatting (alpaca, sharegpt, openai), ranking, columns (prompt, query, response, history, messages, system,
tools, images, videos, audios, chosen, rejected, kto_tag) and tags (role_tag, content_tag, user_tag,
assistant_tag, observation_tag, function_tag, system_tag). What has no equivalent here is refused with one line.
"""

from __future__ import annotations

from typing import Any

from tunelab.core.messages import MEDIA_COLUMNS, OPENAI_TAGS, SHAREGPT_TAGS

KEYS = {"file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "formatting",
        "ranking", "subset", "split", "folder", "num_samples", "columns", "tags"}
COLUMNS = {"prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos", "audios",
           "chosen", "rejected", "kto_tag"}
TAGS = {f"{key}_tag": key for key in ("role", "content", "user", "assistant", "observation", "function", "system")}


def is_llamafactory(entry: Any) -> bool:
    """Whether a registry entry is written in LLaMA-Factory's keys (file_name, hf_hub_url, formatting ...)."""
    return isinstance(entry, dict) and bool(set(entry) & (KEYS - {"subset", "split", "columns"}))


def to_spec(entry: dict[str, Any]) -> dict[str, Any]:
    """The tunelab spec (as a dict for DatasetSpec) of one LLaMA-Factory entry; ValueError says what is unsupported."""
    unknown = set(entry) - KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; valid: {sorted(KEYS)}")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise ValueError("'columns' and 'tags' must be objects")
    if set(columns) - COLUMNS:
        raise ValueError(f"columns: unknown keys {sorted(set(columns) - COLUMNS)}; valid: {sorted(COLUMNS)}")
    if set(tags) - set(TAGS):
        raise ValueError(f"tags: unknown keys {sorted(set(tags) - set(TAGS))}; valid: {sorted(TAGS)}")
    media = [columns[key] for key in MEDIA_COLUMNS if columns.get(key)]
    if media:
        raise ValueError(f"column {media[0]!r} holds {', '.join(k for k in MEDIA_COLUMNS if columns.get(k))}: "
                         "multimodal training is not supported yet")
    spec = {**_source(entry), **_shape(entry.get("formatting") or "alpaca", bool(entry.get("ranking")), columns, tags)}
    if entry.get("num_samples") is not None:
        spec["num_samples"] = entry["num_samples"]
    return spec


def _source(entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("hf_hub_url"):
        source = {"hub": entry["hf_hub_url"], "subset": entry.get("subset"), "split": entry.get("split") or "train"}
        if entry.get("folder"):
            source["folder"] = entry["folder"]
        return source
    for key, what in (("ms_hub_url", "the ModelScope hub"), ("om_hub_url", "the Modelers hub"),
                      ("script_url", "dataset loading scripts"), ("cloud_file_name", "cloud storage files")):
        if entry.get(key):
            raise ValueError(f"{key}: {what} is not supported; give hf_hub_url or file_name")
    if not entry.get("file_name"):
        raise ValueError("give file_name or hf_hub_url")
    return {"file": entry["file_name"], "split": entry.get("split") or "train"}


def _shape(formatting: str, ranking: bool, columns: dict[str, str], tags: dict[str, str]) -> dict[str, Any]:
    """format, columns and tags in tunelab's terms."""
    if formatting not in ("alpaca", "sharegpt", "openai"):
        raise ValueError(f"formatting {formatting!r} is not one of alpaca, sharegpt, openai")
    if formatting == "alpaca":
        return _alpaca(ranking, columns)
    defaults = SHAREGPT_TAGS if formatting == "sharegpt" else OPENAI_TAGS
    out_tags = {**defaults, **{TAGS[k]: v for k, v in tags.items()}}
    messages = columns.get("messages", "conversations" if formatting == "sharegpt" else "messages")
    common = {k: columns[k] for k in ("system", "tools") if columns.get(k)}
    if columns.get("kto_tag"):
        return {"format": "kto", "tags": out_tags, "columns": {"messages": messages, "label": columns["kto_tag"], **common}}
    if ranking:
        return {"format": "preference", "tags": out_tags, "columns": {
            "prompt": messages, "chosen": columns.get("chosen", "chosen"), "rejected": columns.get("rejected", "rejected"),
            **common}}
    return {"format": "sharegpt", "tags": out_tags, "columns": {"messages": messages, **common}}


def _alpaca(ranking: bool, columns: dict[str, str]) -> dict[str, Any]:
    prompt, query = columns.get("prompt", "instruction"), columns.get("query", "input")
    system = {"system": columns["system"]} if columns.get("system") else {}
    if columns.get("kto_tag"):
        return {"format": "kto", "columns": {"prompt": prompt, "query": query, "completion": columns.get("response", "output"),
                                             "label": columns["kto_tag"], **system}}
    if ranking:
        return {"format": "preference", "columns": {"prompt": prompt, "query": query, "chosen": columns.get("chosen", "chosen"),
                                                    "rejected": columns.get("rejected", "rejected"), **system}}
    if "prompt" in columns and not set(columns) & {"response", "query", "history", "chosen", "rejected"}:
        # a corpus: LLaMA-Factory's pre-training reads only the prompt column (e.g. {"prompt": "text"})
        return {"format": "text", "columns": {"text": prompt}, "text_split": "line"}
    mapped = {"instruction": prompt, "input": query, "output": columns.get("response", "output"), **system}
    if columns.get("history"):
        mapped["history"] = columns["history"]
    if columns.get("tools"):
        raise ValueError("a tools column needs sharegpt or openai formatting (tool calls are conversation turns)")
    return {"format": "alpaca", "columns": mapped}
