"""The ``edgechat`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from engine import LLM, EngineError, SamplingParams


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="checkpoint directory or Hub ID (default: the demo model)"
    )
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"]
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--kv-cache-memory", type=float, default=None, help="KV pool size in GiB")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--chat-template", default=None, help="Jinja chat template file")


def engine_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        dtype=args.dtype,
        device=args.device,
        kv_cache_memory=args.kv_cache_memory,
        max_model_len=args.max_model_len,
        chat_template=args.chat_template,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    llm = LLM(args.model, **engine_kwargs(args))
    if llm.engine.is_demo:
        print("[demo model: random weights, the output is meaningless]", file=sys.stderr)
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    engine = llm.engine
    engine.add_request("cli", args.prompt, params)
    while engine.has_unfinished:
        for output in engine.step():
            print(output.new_text, end="", flush=True)
    print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgechat", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate text for one prompt, streamed")
    add_engine_args(generate)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--seed", type=int, default=None)
    generate.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except EngineError as e:
        print(f"edgechat: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
