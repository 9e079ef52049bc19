"""`tunelab chat --model PATH_OR_ID [--adapter DIR ...] [--engine hf|vllm|openai]`: chat in the terminal, or
answer one `--prompt` on stdout."""

from __future__ import annotations

import argparse
import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tunelab.cli.serving import (
    add_model_arguments, add_sampling_arguments, held_gpu, open_from_args, sampling_params, user_errors,
)
from tunelab.core.generation import CHAT_TEMPERATURE
from tunelab.core.media import user_message

HELP = """commands: /use NAME (switch model or adapter), /models, /image PATH (attach to the next message), /system TEXT, /clear, /exit"""


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `chat` command."""
    parser = commands.add_parser("chat", help="chat with a model (and adapters) in the terminal, or answer one --prompt")
    add_model_arguments(parser)
    parser.add_argument("--prompt", help="answer this one message on stdout and exit")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="attach this image to the (first) message; repeat for several (vision-language models)")
    parser.add_argument("--use", help="served name to talk to first (default: the first adapter, else the base model)")
    add_sampling_arguments(parser, temperature=CHAT_TEMPERATURE)  # the Chat tab's default, so answers match the UI
    parser.set_defaults(handler=_chat)


def _chat(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with ExitStack() as stack:
            try:
                stack.enter_context(held_gpu(args, "tunelab chat with",
                                             lambda reason: print(f"queued: {reason}", file=sys.stderr, flush=True)))
            except ValueError as exc:  # the hold left the queue before it got its GPU (stopped from elsewhere)
                print(f"tunelab: {exc}", file=sys.stderr)
                return 2
            return _chat_on_device(args)
    except KeyboardInterrupt:
        return 130


def _chat_on_device(args: argparse.Namespace) -> int:
    try:
        params = sampling_params(args)
        _check_images(args.image)
        engine = open_from_args(args)
    except user_errors() as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return 2
    try:
        from tunelab.services.inference import default_target

        target = args.use or default_target(engine, args.model, args.adapter)
        engine.check_model(target)
        if args.prompt is not None:
            return _one_shot(engine, target, args, params)
        return _interactive(engine, target, args, params)
    except user_errors() as exc:
        print(f"tunelab: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.close()


def _messages(system: str | None, history: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + history


def _stream(engine: Any, target: str, messages: list[dict], params: Any, cancel: threading.Event) -> str:
    """Print the reply as it streams; return it."""
    pieces = []
    for delta in engine.chat(target, messages, params, cancel):
        if delta.text:
            pieces.append(delta.text)
            sys.stdout.write(delta.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces)


def _check_images(images: list[str]) -> None:
    """Refuse a missing or unreadable --image before the model loads."""
    from tunelab.core.generation import InferenceError
    from tunelab.core.media import load_image

    for image in images:
        try:
            load_image(str(Path(image).expanduser()))
        except ValueError as exc:
            raise InferenceError(f"--image: {exc}") from None


def _one_shot(engine: Any, target: str, args: argparse.Namespace, params: Any) -> int:
    message = user_message(args.prompt, args.image)
    _stream(engine, target, _messages(args.system, [message]), params, threading.Event())
    return 0


def _interactive(engine: Any, target: str, args: argparse.Namespace, params: Any) -> int:
    system, history, images = args.system, [], list(args.image)
    names = [m.id for m in engine.models()]
    print(f"chatting with {target} ({engine.name}); served: {', '.join(names)}. {HELP}", file=sys.stderr)
    while True:
        try:
            line = input(f"[{target}] you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command in ("/exit", "/quit"):
                return 0
            if command == "/clear":
                history = []
            elif command == "/system":
                system = rest.strip() or None
            elif command == "/models":
                print("\n".join(f"{m.id}{f'  (adapter on {m.parent})' if m.parent else ''}" for m in engine.models()))
            elif command == "/use" and rest.strip() in names:
                target, history = rest.strip(), []
            elif command == "/image" and rest.strip():
                try:
                    _check_images([rest.strip()])
                    images.append(rest.strip())
                except user_errors() as exc:
                    print(f"tunelab: {exc}", file=sys.stderr)
            else:
                print(f"{HELP}; served: {', '.join(names)}", file=sys.stderr)
            continue
        history.append(user_message(text, images))
        images = []
        cancel = threading.Event()
        try:
            reply = _stream(engine, target, _messages(system, history), params, cancel)
        except KeyboardInterrupt:
            cancel.set()
            print("\n(stopped)", file=sys.stderr)
            history.pop()
            continue
        except user_errors() as exc:  # e.g. an image sent to a text-only model: say so, keep chatting
            print(f"tunelab: {exc}", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})
