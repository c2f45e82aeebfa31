"""gpu-check.json as Markdown tables, ready for docs/benchmarks.md (gpu_check.py)."""

from __future__ import annotations


def markdown(report: dict) -> str:
    device = report["device"]
    lines = [
        f"# GPU check: {device['name']}",
        "",
        f"torch {device['torch']}, triton {device['triton']}"
        + (
            f", CUDA {device['torch_cuda']}, {device['capability']}, {device['sms']} SMs, "
            f"{device['memory_gib']} GiB"
            if device["cuda"]
            else ""
        ),
        f"total {report.get('total_s', 0)} s",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
    ]
    for name, step in report["steps"].items():
        lines.append(f"| {name} | {step['status']} | {step.get('seconds', '-')} |")
    arch = device["capability"].removeprefix("sm_") if device["cuda"] else "ARCH"  # dry run
    lines += _tests(report["tests"]) + _kernels(report["kernels"], arch)
    lines += _decode(report["decode"])
    lines += _static(report["static"])
    return "\n".join(lines) + "\n"


def _tests(tests: dict | None) -> list[str]:
    if not tests:
        return []
    lines = [
        "",
        f"Tests: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped"
        + (f", {tests['interrupted']} cut off by the time box" if tests.get("interrupted") else ""),
    ]
    return lines + [f"- failed: `{name}`" for name in tests["failures"]]


def _kernels(kernels: dict | None, arch: str) -> list[str]:
    if not kernels:
        return []
    lines = [
        "",
        f"W4A16 vs fp16 matmul ({kernels['dtype']}; times summed over the shapes of each M)",
        "",
        "| M | best launch | best vs fp16 | table's launch vs fp16 | best vs gemlite |",
        "|---|---|---|---|---|",
    ]
    for m, s in kernels.get("summary", {}).items():
        gemlite = f"{s['best_vs_gemlite']:.2f}x" if "best_vs_gemlite" in s else "-"
        lines.append(
            f"| {m} | {s['best']} | {s['best_vs_fp16']:.2f}x | {s['table_vs_fp16']:.2f}x | "
            f"{gemlite} |"
        )
    return lines + _gated(kernels.get("gated", [])) + _measured_table(kernels, arch)


def _measured_table(kernels: dict, arch: str) -> list[str]:
    """The fastest launch per measured M as kernels/awq_configs.py's buckets (each ends at
    its M; the last takes any larger M)."""
    items = list(kernels.get("summary", {}).items())
    lines = [
        "",
        "The measured table for kernels/awq_configs.py (review before committing):",
        "",
        "```python",
        f"TABLE[{arch}] = (",
    ]
    for i, (m, s) in enumerate(items):
        launch = dict(s["best_launch"])
        fields = ", ".join(f"{k}={v!r}" for k, v in launch.items() if k != "variant")
        bound = "1 << 30" if i == len(items) - 1 else str(m)
        lines.append(f"    ({bound}, AWQLaunch({launch['variant']!r}, {fields})),")
    return lines + [")", "```"]


def _gated(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "gate_up with SiLU·mul in its epilogue (as the engine runs it) against its launch "
        "followed by the SiLU kernel",
        "",
        "| M | K x N | launch | then SiLU us | gated us | speedup | same output |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['M']} | {r['K']} x {r['N']} | {r['launch']} | {r['then_silu_us']:.1f} | "
            f"{r['gated_us']:.1f} | {r['then_silu_us'] / r['gated_us']:.2f}x | "
            f"{'yes' if r['equal'] else 'NO'} |"
        )
    return lines


def _decode(decode: dict | None) -> list[str]:
    if not decode:
        return []
    lines = [
        "",
        f"Decode (graph replay of forward + LM head, context 512); copy bandwidth "
        f"{decode['copy_bandwidth_gbs']:.0f} GB/s",
        "",
        "| model | weights | batch | tok/s | GB/step | of ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for r in decode["rows"]:
        measured = (
            f"failed: `{r['error']}` | | "
            if "error" in r
            else f"{r['tok_s']:.1f} | {r['gb_per_step']:.2f} | {r['of_ceiling']:.0%}"
        )
        lines.append(f"| {r['model']} | {r['weights']} | {r['batch']} | {measured} |")
    capture = decode.get("graph_capture")
    if capture:
        lines.append("")
        if "error" in capture:
            lines.append(
                f"CUDA graph capture ({capture['model']} int4) failed: `{capture['error']}`"
            )
        else:
            lines.append(
                f"CUDA graph capture ({capture['model']} int4, sizes {capture['sizes']}): "
                f"{capture['seconds']:.1f} s, {capture['memory_mib']:.0f} MiB"
            )
    return lines


def _static(static: dict | None) -> list[str]:
    if not static:
        return []
    lines = [
        "",
        f"Static report (a proxy, not a speed figure; Triton {static['triton']}): "
        f"{len(static['kernels'])} configurations compiled in {static['compile_s']} s",
        "",
        "| arch | kernel | max registers | spills (B) | max SASS / weight |",
        "|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for k in static["kernels"]:
        gated = " (gated: gate_up + SiLU·mul)" if "GATED=True" in k["launch"] else ""
        groups.setdefault((k["arch"], k["kernel"] + gated), []).append(k)
    for (arch, kernel), ks in sorted(groups.items()):
        per_weight = [k["sass_per_weight"] for k in ks if k.get("sass_per_weight")]
        shown = f"{max(per_weight):.2f}" if per_weight else "-"
        lines.append(
            f"| {arch} | {kernel} | {max(k['registers'] for k in ks)} | "
            f"{sum(k['spill_bytes'] for k in ks)} | {shown} |"
        )
    return lines
