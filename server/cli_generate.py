"""``edgechat generate``: one prompt's answer streamed to the terminal, then tokens/s.

server/cli.py registers it with ``add_generate_command(subparsers, ...)``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

# NOTE: the engine (torch) is imported by the command itself, as in server/cli_quant.py.


def add_generate_command(
    subparsers: argparse._SubParsersAction,
    add_engine_args: Callable[[argparse.ArgumentParser], None],
    formatter: type[argparse.HelpFormatter],
) -> None:
    generate = subparsers.add_parser(
        "generate",
        help="answer one prompt on the terminal (no server)",
        description="Load a model, answer one prompt, print the text as it comes and then "
        "the tokens per second (on stderr). With a chat template the prompt is a user "
        "message (--chat); --raw continues the text as it is.",
        formatter_class=formatter,
    )
    add_engine_args(generate)
    generate.add_argument("--prompt", required=True, help="the prompt or user message")
    mode = generate.add_mutually_exclusive_group()
    mode.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="apply the chat template (the default when the checkpoint has one)",
    )
    mode.add_argument(
        "--raw", dest="chat", action="store_false", help="continue the prompt's text as it is"
    )
    generate.add_argument("--system", help="system prompt (with --chat)")
    generate.add_argument(
        "--image",
        action="append",
        type=Path,
        help="attach an image file to the message (repeatable; a VLM, with --chat)",
    )
    generate.add_argument(
        "--video",
        action="append",
        type=Path,
        help="attach a video file to the message (repeatable; Qwen2.5-VL, or VILA with "
        "num_video_frames, with --chat)",
    )
    generate.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate")
    generate.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)"
    )
    generate.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    generate.add_argument("--seed", type=int, help="seed for reproducible sampling")
    generate.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from client.chat import image_data_url
    from engine import LLM, InvalidRequestError, SamplingParams
    from server.cli import engine_kwargs

    llm = LLM(args.model, **engine_kwargs(args))
    if llm.is_demo:
        print("[demo model: random weights, the output is meaningless]", file=sys.stderr)
    chat = llm.has_chat_template if args.chat is None else args.chat
    if not chat and (args.image or args.video or args.system):
        raise InvalidRequestError("--image, --video and --system need the chat template (--chat)")
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    if chat:
        parts = []
        for kind, paths in (("image", args.image), ("video", args.video)):
            try:
                parts += [
                    {"type": f"{kind}_url", f"{kind}_url": {"url": image_data_url(path)}}
                    for path in paths or []
                ]
            except OSError as e:
                raise InvalidRequestError(
                    f"cannot read the {kind} {e.filename}: {e.strerror}"
                ) from None
        messages = [{"role": "system", "content": args.system}] if args.system else []
        content = [*parts, {"type": "text", "text": args.prompt}] if parts else args.prompt
        outputs = llm.stream_chat([*messages, {"role": "user", "content": content}], params)
    else:
        outputs = llm.stream(args.prompt, params)
    start = time.perf_counter()
    output = None
    for output in outputs:
        print(output.new_text, end="", flush=True)
    print()
    seconds = time.perf_counter() - start
    tokens = output.num_output_tokens if output else 0
    print(
        f"[{tokens} tokens in {seconds:.2f} s: {tokens / seconds:.1f} tok/s, "
        f"finish_reason {output.finish_reason if output else None}]",
        file=sys.stderr,
    )
    return 0
