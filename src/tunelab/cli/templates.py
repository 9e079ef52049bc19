"""`tunelab templates list|show|render`: inspect the chat-template registry."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.templates import TemplateFileError, UnknownTemplate, registry

EXIT_UNKNOWN = 2
EXIT_REFUSED = 3


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `templates` command group."""
    group = commands.add_parser("templates", help="list, show and render chat templates")
    sub = group.add_subparsers(dest="templates_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", help="list template families and their model ids")
    listing.add_argument("--json", action="store_true", help="print a JSON list of objects")
    listing.set_defaults(handler=_list)

    show = sub.add_parser("show", help="print a family's definition and an example render")
    show.add_argument("name")
    show.set_defaults(handler=_show)

    render = sub.add_parser("render", help="render messages exactly as the official template does")
    which = render.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a hub model id from the catalog")
    which.add_argument("--template", help="a template family name")
    render.add_argument("--messages", required=True, type=Path, help="JSON file: a list of {role, content}")
    render.add_argument("--generation-prompt", action="store_true", help="end with the assistant prompt")
    render.set_defaults(handler=_render)


def _list(args: argparse.Namespace) -> int:
    reg = registry()
    rows = [
        {
            "name": t.name,
            "title": t.title,
            "models": [e.id for e in t.model_entries],
            "quirks": list(t.quirks),
            "notes": t.notes,
        }
        for t in (reg.templates[n] for n in reg.names())
    ]
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return 0
    for row in rows:
        models = ", ".join(row["models"][:3]) + (f" (+{len(row['models']) - 3})" if len(row["models"]) > 3 else "")
        print(f"{row['name']:<28} {models}")
    revisions = sum("@" in row["name"] for row in rows)
    print(f"\n{len(rows) - revisions} template families (+{revisions} earlier revisions, family@date), "
          f"{len(reg.catalog)} model ids in the catalog")
    return 0


EXAMPLE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi, how can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]


def _show(args: argparse.Namespace) -> int:
    try:
        template = registry().get(args.name)
    except UnknownTemplate as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    print(template.model_dump_json(indent=1, exclude={"jinja", "turns"}, exclude_none=True))
    print("\n# Jinja chat template\n" + template.source)
    messages = EXAMPLE
    if "no_system" in template.quirks:
        messages = EXAMPLE[1:]
    try:
        example = template.render(messages, add_generation_prompt=True).text
    except TemplateRefusal as exc:
        example = f"(refused: {exc})"
    print("# Example render\n" + example)
    return 0


def _render(args: argparse.Namespace) -> int:
    try:
        messages = json.loads(args.messages.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"tunelab: cannot read messages from {args.messages}: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        print(f"tunelab: {args.messages}: expected a JSON list of {{role, content}} objects", file=sys.stderr)
        return EXIT_UNKNOWN
    try:
        reg = registry()
        if args.model:
            hit = reg.for_model(args.model)
            template, entry = hit.template, hit.entry
        else:
            template, entry = reg.get(args.template), None
    except (UnknownTemplate, TemplateFileError) as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    try:
        text = template.render(messages, args.generation_prompt, model=entry).text
    except TemplateRefusal as exc:
        print(f"tunelab: {template.name} refuses these messages: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
