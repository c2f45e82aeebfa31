"""The ``edgechat`` command line: ``serve``, ``chat``, ``generate``, and the quantization
commands of server/cli_quant.py.

The options of ``serve`` and ``chat`` and the engine's options may also be set with
``EDGECHAT_<OPTION>`` environment variables (``--max-model-len`` from
``EDGECHAT_MAX_MODEL_LEN``; each option's help names its variable); an option given on
the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from importlib.metadata import version

from server.cli_generate import add_generate_command
from server.cli_quant import add_quant_commands
from server.tools.registry import PARSERS

# NOTE: the engine (and torch) are imported by the commands that need them, so that
# `edgechat chat` starts at once.

logger = logging.getLogger("edgechat")

ENV_PREFIX = "EDGECHAT_"
# uvicorn's own deadline for open connections on shutdown: after the streams' grace
# period (which sse-starlette notices within half a second), so streams end cleanly.
SHUTDOWN_SLACK_SECONDS = 5.0
KEEP_ALIVE_SECONDS = 5
# A request head (request line and headers) must arrive whole within this.
HEAD_TIMEOUT_SECONDS = 10.0


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        unset = action.default is None or action.default == argparse.SUPPRESS
        # A flag (--raw, --no-warmup) has no value to show.
        if unset or action.nargs == 0 or "%(default)" in help:
            return help
        return f"{help} (default: %(default)s)"


def add_option(parser: argparse.ArgumentParser, flag: str, help: str, **kwargs) -> None:
    """``add_argument`` with the default taken from the environment when set there.
    argparse converts a string default with ``type``, so a bad value fails like a bad
    flag would."""
    name = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
    value = os.environ.get(name)
    if value:
        kwargs["default"] = value
    parser.add_argument(flag, help=f"{help} [env {name}]", **kwargs)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--model", "checkpoint directory or Hub ID (default: the demo model)")
    add_option(parser, "--dtype", "auto, float32, float16 or bfloat16", default="auto")
    add_option(parser, "--device", "auto, cpu or cuda[:N]", default="auto")
    add_option(
        parser,
        "--threads",
        "torch's CPU threads (default: on CPU, one a physical core the process may use)",
        type=int,
    )
    add_option(
        parser,
        "--quantization",
        "on CPU, quantize a dense checkpoint's weights at load by round-to-nearest: int4 "
        "(group 128) or int8 decoder linears, int8 LM head and embedding (AWQ checkpoints "
        "run int4 without it; `edgechat quantize` is more accurate)",
        choices=["none", "int8", "int4"],
        default="none",
    )
    add_option(parser, "--kv-cache-memory", "KV pool size in GiB", type=float)
    add_option(parser, "--max-model-len", "cap on the context length", type=int)
    add_option(parser, "--max-num-seqs", "requests run at once", type=int, default=64)
    add_option(parser, "--chat-template", "Jinja chat template file")
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        default=bool(os.environ.get("EDGECHAT_NO_WARMUP")),
        help="on a GPU, skip compiling every kernel at start (the first requests then "
        "compile them) [env EDGECHAT_NO_WARMUP]",
    )


def add_media_args(parser: argparse.ArgumentParser) -> None:
    """What a server lets its clients send as images."""
    # NOTE: the image defaults repeat ImageLimits' own, since importing the engine here
    # would slow `edgechat chat`'s start.
    add_option(
        parser, "--limit-images-per-prompt", "most images one prompt may hold", type=int, default=8
    )
    add_option(
        parser, "--max-image-bytes", "largest encoded image", type=int, default=20 * (1 << 20)
    )
    add_option(parser, "--max-image-pixels", "largest decoded image", type=int, default=40_000_000)
    add_option(
        parser,
        "--image-fetch-timeout",
        "seconds for a whole http(s) image fetch",
        type=float,
        default=10.0,
    )
    add_option(
        parser,
        "--allowed-local-media-path",
        "directory from which file: image URLs may be read (default: none, refused)",
    )
    add_option(
        parser,
        "--allowed-media-domains",
        "comma-separated hosts from which http(s) image URLs may be fetched (default: any)",
    )
    parser.add_argument(
        "--allow-private-media-urls",
        action="store_true",
        help="also fetch image URLs from loopback, private and link-local addresses "
        "(e.g. a camera on the LAN); refused by default",
    )
    parser.add_argument(
        "--no-http-media",
        action="store_true",
        help="refuse http(s) image URLs (data: URLs only)",
    )
    # Videos come under the image rules above (URLs, domains, file: directory, pixels).
    add_option(
        parser, "--max-video-bytes", "largest encoded video", type=int, default=64 * (1 << 20)
    )
    add_option(
        parser,
        "--max-video-frames",
        "most frames a video may have (counted from its container before any is decoded)",
        type=int,
        default=18_000,
    )
    for bound in ("min", "max"):
        add_option(
            parser,
            f"--{bound}-pixels",
            f"Qwen-VL models: the {bound}imum pixels an image is resized to "
            "(default: the checkpoint's preprocessor_config.json)",
            type=int,
        )


def engine_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        dtype=args.dtype,
        device=args.device,
        threads=args.threads,
        quantization=args.quantization,
        kv_cache_memory=args.kv_cache_memory,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        chat_template=args.chat_template,
        warm_up=not args.no_warmup,
    )


def media_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        limit_images_per_prompt=args.limit_images_per_prompt,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        image_fetch_timeout=args.image_fetch_timeout,
        allowed_local_media_path=args.allowed_local_media_path,
        allowed_media_domains=_comma_list(args.allowed_media_domains),
        allow_private_media_urls=args.allow_private_media_urls,
        allow_http_media=not args.no_http_media,
        max_video_bytes=args.max_video_bytes,
        max_video_frames=args.max_video_frames,
        resize_min_pixels=args.min_pixels,
        resize_max_pixels=args.max_pixels,
    )


def _comma_list(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from engine import AsyncLLM, EngineConfig
    from engine.demo import DEMO_MODEL_ID
    from server.app import create_app
    from server.http_protocol import head_timeout_protocol
    from server.settings import ServerSettings

    try:
        settings = ServerSettings(
            api_key=args.api_key,
            served_model_name=args.served_model_name,
            max_queued_requests=args.max_queued_requests,
            max_request_bytes=args.max_request_bytes,
            keepalive_seconds=args.keepalive,
            shutdown_grace_seconds=args.shutdown_timeout,
            web_ui=not args.no_web_ui,
            docs=not args.no_docs,
            cors_origins=_comma_list(args.cors_origins),
            stream_send_timeout_seconds=args.stream_send_timeout,
            body_read_timeout_seconds=args.body_read_timeout,
            max_client_errors_per_minute=args.max_client_errors,
            tool_call_parser=args.tool_call_parser,
        )
        config = EngineConfig(model=args.model, **engine_kwargs(args), **media_kwargs(args))
    except ValueError as e:  # both validate in __post_init__ (EngineError is a ValueError)
        return _error(e)
    if args.model is None:
        logger.warning(
            "no --model given: serving the built-in demo model %r (random weights, "
            "meaningless output)",
            DEMO_MODEL_ID,
        )
    load_failures: list[BaseException] = []

    def on_load_failure(error: BaseException) -> None:
        load_failures.append(error)
        server.should_exit = True

    app = create_app(settings, lambda: AsyncLLM(config), on_load_failure)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=logging.getLogger().level,
            timeout_graceful_shutdown=args.shutdown_timeout + SHUTDOWN_SLACK_SECONDS,
            # Idle keep-alive connections are closed after this (uvicorn's default, kept
            # explicit: each open socket costs the server).
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            http=head_timeout_protocol(HEAD_TIMEOUT_SECONDS),
        )
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the
    # handler it found; with the default one the process would die by the signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run()
    return 2 if load_failures else 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _error(error: Exception) -> int:
    print(f"edgechat: error: {error}", file=sys.stderr)
    return 2


def cmd_chat(args: argparse.Namespace) -> int:
    from client import chat  # the openai client: only this command needs it

    return chat.main(
        args.url,
        args.api_key,
        args.model,
        [*(args.image or []), *(args.video or [])],
        args.system,
        args.temperature,
        args.max_tokens,
    )


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="serve the OpenAI-compatible HTTP API", formatter_class=HelpFormatter
    )
    add_engine_args(serve)
    add_media_args(serve)
    add_option(serve, "--host", "address to listen on", default="127.0.0.1")
    add_option(serve, "--port", "port to listen on (0: any free port)", type=int, default=8000)
    add_option(serve, "--api-key", "require 'Authorization: Bearer KEY' (all but /health)")
    add_option(
        serve,
        "--served-model-name",
        "model id for clients (default: the checkpoint directory's name, the Hub ID, or "
        "edgechat-demo)",
    )
    add_option(
        serve,
        "--max-queued-requests",
        "generations that may wait for a slot before new requests get 503",
        type=int,
        default=256,
    )
    add_option(
        serve, "--max-request-bytes", "larger bodies get 413", type=int, default=4 * (1 << 20)
    )
    add_option(
        serve, "--keepalive", "seconds between SSE keep-alive comments", type=float, default=10.0
    )
    add_option(
        serve,
        "--shutdown-timeout",
        "seconds running requests may take to finish on SIGTERM before they are aborted",
        type=float,
        default=10.0,
    )
    add_option(
        serve,
        "--cors-origins",
        "comma-separated web origins whose pages may call the API ('*': any)",
    )
    add_option(
        serve,
        "--stream-send-timeout",
        "seconds a streaming client may stop reading before it is disconnected and its "
        "request aborted",
        type=float,
        default=60.0,
    )
    add_option(
        serve,
        "--body-read-timeout",
        "seconds a request body may take to arrive (408 after)",
        type=float,
        default=30.0,
    )
    add_option(
        serve,
        "--max-client-errors",
        "refused (4xx) requests a client address may cause a minute before its requests "
        "get 429 unread (0: no limit)",
        type=int,
        default=12,
    )
    add_option(
        serve,
        "--tool-call-parser",
        f"format of the model's tool calls: {', '.join(PARSERS)} "
        "(default: told from the chat template)",
    )
    serve.add_argument(
        "--no-web-ui",
        action="store_true",
        help="do not serve the browser chat page at / (the API alone)",
    )
    serve.add_argument(
        "--no-docs",
        action="store_true",
        help="do not serve the API's description at /openapi.json and /docs",
    )
    serve.set_defaults(func=cmd_serve)


def add_chat_parser(commands: argparse._SubParsersAction) -> None:
    chat_parser = commands.add_parser(
        "chat", help="chat with a server on the terminal", formatter_class=HelpFormatter
    )
    add_option(chat_parser, "--url", "server address", default="http://127.0.0.1:8000")
    add_option(chat_parser, "--api-key", "the server's API key")
    # NOTE: not from $EDGECHAT_MODEL, which names the checkpoint `serve` loads.
    chat_parser.add_argument("--model", help="model id (default: the server's first)")
    add_option(chat_parser, "--system", "system prompt")
    add_option(chat_parser, "--temperature", "sampling temperature", type=float)
    add_option(chat_parser, "--max-tokens", "longest reply in tokens", type=int)
    chat_parser.add_argument(
        "--image",
        action="append",
        help="attach an image file to the first message, as a data-URL image_url part "
        "(repeatable); a text-only model answers 400 'this model does not accept images'",
    )
    chat_parser.add_argument(
        "--video",
        action="append",
        help="attach a video file to the first message, as a data-URL video_url part "
        "(repeatable); a model without videos answers 400 'this model does not accept videos'",
    )
    chat_parser.set_defaults(func=cmd_chat)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgechat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgechat {version('edgechat')}")
    add_log_level(parser, default=os.environ.get(ENV_PREFIX + "LOG_LEVEL"))
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(commands)
    add_chat_parser(commands)
    add_generate_command(commands, add_engine_args, HelpFormatter)
    add_quant_commands(commands)
    for command in commands.choices.values():
        # Also after the command (`edgechat serve --log-level DEBUG`); SUPPRESS keeps a
        # subcommand that was not given the flag from overwriting the one before it.
        add_log_level(command, default=argparse.SUPPRESS)
    return parser


def add_log_level(parser: argparse.ArgumentParser, default: str | None) -> None:
    name = ENV_PREFIX + "LOG_LEVEL"
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default,
        help=f"{', '.join(LOG_LEVELS)} (default: INFO for serve, WARNING otherwise) [env {name}]",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A server tells what it is doing; the one-shot commands stay quiet.
    level = args.log_level or ("INFO" if args.command == "serve" else "WARNING")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except ValueError as e:
        # Bad input to the engine (a checkpoint that cannot load, bad options) is the
        # user's to fix, not a crash. Commands that raise it have imported the engine.
        from engine import EngineError

        if not isinstance(e, EngineError):
            raise
        return _error(e)


if __name__ == "__main__":
    sys.exit(main())
