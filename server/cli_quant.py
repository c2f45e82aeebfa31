"""``edgechat quantize`` and ``edgechat eval-ppl``: int4 checkpoints and their accuracy.

server/cli.py registers these with ``add_quant_commands(subparsers)`` and maps the
engine's errors (EngineError) to a message and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

# NOTE: the engine (torch) is imported by the commands themselves, so that registering
# them does not slow down `edgechat chat`, which never needs it.

# Measured times: docs/benchmarks.md, "AWQ speed on Qwen2.5-0.5B shapes" (a random model
# of that shape, benchmarks/bench_awq_speed.py) and the SmolLM2 table (bench_awq.py).
AWQ_TIME = (
    "How long AWQ takes on a 2-core x86 CPU (measured): a 0.5B model (Qwen2.5-0.5B's "
    "shapes: 24 layers, hidden 896, intermediate 4864) at the defaults (128 x 512 tokens) "
    "about 45 s a layer on a quiet machine, 18 min in all, twice that on a busy one; "
    "SmolLM2-135M (30 layers, hidden 576) with --num-samples 4 about 4 min. Half of a "
    "layer's time at the defaults is recording its inputs, which grows with --num-samples; "
    "the search measures its errors on at most 2048 tokens. On a GPU: not measured yet. "
    "RTN takes seconds."
)


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default to its help, except where there is none to show:
    required options, flags, and options whose help says what their absence means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.nargs == 0 or action.default is None:
            return action.help
        return super()._get_help_string(action)


def add_quant_commands(subparsers: argparse._SubParsersAction) -> None:
    q = subparsers.add_parser(
        "quantize",
        help="write an AutoAWQ GEMM int4 checkpoint of a 16-bit model",
        description="Quantize a model to 4 bits, one decoder layer at a time, in the "
        "AutoAWQ GEMM format (loads in edgechat and other AWQ-aware tools). Of a LLaVA, "
        "the language model is quantized; the vision tower and projector stay 16-bit.",
        epilog=AWQ_TIME,
        formatter_class=DefaultsFormatter,
    )
    q.add_argument("--model", required=True, help="checkpoint directory or Hub ID")
    q.add_argument("--out", required=True, help="output directory (must not exist yet)")
    q.add_argument(
        "--method",
        choices=["awq", "rtn"],
        default="awq",
        help="awq: activation-aware search; rtn: plain rounding",
    )
    q.add_argument(
        "--group-size",
        type=int,
        default=128,
        help="input channels per int4 scale and zero point; must divide every linear's "
        "in-features (64 or 32 where 128 does not)",
    )
    q.add_argument(
        "--calib-data",
        default=None,
        help="a text file, a .jsonl with a 'text' field, or a directory of "
        ".txt/.md files (default: the Pile validation set from the Hub)",
    )
    q.add_argument(
        "--num-samples",
        type=int,
        default=128,
        help="calibration windows of --seq-len tokens, cut from the texts laid end to end "
        "(AutoAWQ's 128 counts documents of at most 512 tokens, which usually makes fewer "
        "windows)",
    )
    q.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window")
    q.add_argument(
        "--no-clip", dest="clip", action="store_false", help="skip AWQ's weight clipping search"
    )
    q.add_argument(
        "--device", default="auto", help="where the search runs: auto (a GPU if any), cpu, cuda[:N]"
    )
    q.set_defaults(func=cmd_quantize)

    p = subparsers.add_parser(
        "eval-ppl",
        help="perplexity of a model over a text file",
        description="Perplexity over consecutive windows of --seq-len tokens of a text file.",
    )
    p.add_argument("--model", required=True, help="checkpoint directory or Hub ID")
    p.add_argument("--data", required=True, help="a UTF-8 text file")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")
    p.add_argument(
        "--backend",
        choices=["engine", "transformers"],
        default="engine",
        help="engine (default) or the transformers reference",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.set_defaults(func=cmd_eval_ppl)


def cmd_quantize(args: argparse.Namespace) -> int:
    from engine.quant.quantizer import QuantizeConfig, quantize

    config = QuantizeConfig(
        method=args.method,
        group_size=args.group_size,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        clip=args.clip,
        device=args.device,
    )
    start = time.perf_counter()
    # SIGTERM (docker stop, systemd, timeout) unwinds like Ctrl-C, so the partial
    # checkpoint is deleted rather than left beside the output directory.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        out_dir = quantize(args.model, args.out, config, calib_data=args.calib_data)
    except KeyboardInterrupt:
        print("edgechat: interrupted; no checkpoint was written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        f"wrote {out_dir} ({args.method}, group size {args.group_size}) "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return 0


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def cmd_eval_ppl(args: argparse.Namespace) -> int:
    from engine.quant.perplexity import perplexity

    result = perplexity(
        args.model,
        args.data,
        seq_len=args.seq_len,
        max_tokens=args.max_tokens,
        backend=args.backend,
        device=args.device,
    )
    print(
        f"perplexity {result.value:.4f} over {result.num_tokens} tokens "
        f"({args.backend}, windows of {args.seq_len})"
    )
    return 0
