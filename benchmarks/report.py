"""The suite's results as people read them: report.md, cost_growth.md and cost_growth.png.

Everything here is rendered from the plain data `benchmarks.suite.run_suite`
returns (and results.json holds), so a report can be redrawn from a results
file without measuring again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MIB = 1 << 20
# Issue 4's CPU targets: ours / torch for the whole 512 px dream, and the streaming overhead.
TARGET_RATIO = {"googlenet-bvlc": 0.67, "efficientnet-lite0": 1.0}
TARGET_OVERHEAD = 0.10


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    """Write results.json, report.md and, with cost growth measured, cost_growth.md and .png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "report.md"]
    written[0].write_text(json.dumps(results, indent=1) + "\n")
    if "growth" in results:
        (out / "cost_growth.md").write_text(render_growth(results) + "\n")
        plot_growth(results, out / "cost_growth.png")
        written += [out / "cost_growth.md", out / "cost_growth.png"]
    written[1].write_text(render_report(results) + "\n")
    return written


def render_report(results: dict[str, Any]) -> str:
    """The whole report in markdown (printed as it is at the end of a run)."""
    config = results["config"]
    lines = ["# dreamstream benchmarks: our engine against PyTorch eager", "", *_header(results), ""]
    lines += [f"Note: {note}" for note in results["notes"]]
    if "dreams" in results:
        lines += [
            "",
            f"## Whole dreams: {Path(config['image']).name} at {config['size']} px, "
            f"{config['octaves']} octaves x {config['steps']} steps, seed {config['seed']}",
            "",
            f"Each side ran in a fresh process per repeat, ours and torch taking turns (ours first on even "
            f"repeats). Median over {config['repeats']} repeat(s), [min-max] the spread. Each process dreamed "
            "twice on the same picture: the first (cold) dream pays the first run at each octave size, the "
            "second (warm) is what a serving process sees from then on; step times are the warm dreams'. "
            "Model loading is not timed. Peak RSS is the whole process's at the end; the torch process's "
            "figure before the dream includes the onnxruntime library, which it imports (through "
            "server/engine.py, home of DreamParams and the event types) but never uses.",
        ]
        for dream in results["dreams"]:
            lines += ["", *_dream_section(dream)]
    if "growth" in results:
        lines += ["", "## Cost growth", "", *render_growth(results, heading=False).splitlines()]
        lines += ["", "![step time and peak memory against the picture's side](cost_growth.png)"]
    if "serving" in results:
        lines += ["", *_serving_section(results["serving"])]
    lines += ["", *_targets(results), "", f"Rerun: `{results['command']}`"]
    return "\n".join(lines)


def _header(results: dict[str, Any]) -> list[str]:
    m, config = results["machine"], results["config"]
    return [
        f"- date: {results['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores; {m['platform']}",
        f"- software: Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}, numpy {m['numpy']}",
        f"- threads: {config['threads']} on each side (ONNX Runtime intra-op threads, torch.set_num_threads), CPU",
        f"- command: `{results['command']}`, at commit {results['revision']}",
    ]


def _dream_section(dream: dict[str, Any]) -> list[str]:
    s = dream["summary"]
    ours, torch, ratio = s["ours"], s["torch"], s["ratio"]
    layers = ", ".join(f"{name}" if weight == 1 else f"{name}:{weight:g}" for name, weight in dream["layers"].items())
    rows = [
        ("whole dream, warm (s)", _spread(ours["dream_seconds"]), _spread(torch["dream_seconds"]),
         f"**{ratio['dream_seconds']:.2f}** {_range(ratio['dream_seconds_per_repeat'])}"),
        ("whole dream, cold (s)", _spread(ours["cold_dream_seconds"]), _spread(torch["cold_dream_seconds"]),
         f"{ratio['cold_dream_seconds']:.2f}"),
    ]  # fmt: skip
    for (height, width), o, t, r in zip(
        dream["octave_sizes"], ours["step_seconds"], torch["step_seconds"], ratio["step_seconds"], strict=True
    ):
        rows.append((f"step at {width}x{height} (ms)", f"{o * 1000:.0f}", f"{t * 1000:.0f}", f"{r:.2f}"))
    rows += [
        ("peak RSS (MiB)", _mib(ours["peak_rss"]), _mib(torch["peak_rss"]), f"{ratio['peak_rss']:.2f}"),
        ("  before the dream: libraries, model (MiB)", _mib(ours["loaded_rss"]), _mib(torch["loaded_rss"]), ""),
        ("  added by the dream (MiB)", _mib(ours["peak_rss"] - ours["loaded_rss"]),
         _mib(torch["peak_rss"] - torch["loaded_rss"]), f"{ratio['dream_rss']:.2f}"),
        ("threads reported", _threads(ours), _threads(torch), ""),
    ]  # fmt: skip
    agreement = dream["agreement"]
    return [
        f"### {dream['backbone']} at {layers}",
        "",
        "| | ours | torch | ours / torch |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {label} | {o} | {t} | {r} |" for label, o, t, r in rows),
        "",
        "PSNR of the pictures at the end of each octave (the last is the final picture): ours against torch "
        f"{_psnrs(agreement['ours_vs_torch'])}; torch float32 against torch float64 (what float32 rounding "
        f"alone does to this dream) {_psnrs(agreement['torch_float32_vs_float64'])}. Final pictures identical "
        f"over the repeats: ours {_yes(agreement['ours_reproducible'])}, "
        f"torch {_yes(agreement['torch_reproducible'])}.",
    ]


def render_growth(results: dict[str, Any], heading: bool = True) -> str:
    """cost_growth.md: step time and peak memory at each picture side, both sides."""
    growth, config = results["growth"], results["config"]
    layer = ", ".join(growth["layers"])
    lines = [f"# Cost growth: {growth['backbone']} at {layer}", ""] if heading else []
    lines += [
        f"{growth['backbone']} at {layer}; {Path(config['image']).name} resized to a square of each side, one "
        f"octave; the median of {config['growth_steps']} steps ({config['growth_steps_largest']} at the largest "
        f"side) after {growth['warmup_steps']} warm-up step, one fresh process per side and size, "
        f"{config['threads']} threads each, CPU. Peak RSS is the whole process's (libraries and model included).",
        "",
        "| side (px) | ours step (ms) | torch step (ms) | ours / torch | ours peak RSS (MiB) | "
        "torch peak RSS (MiB) | ours / torch |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in growth["rows"]:
        ours, torch, ratio = row["ours"], row["torch"], row["ratio"]
        lines.append(
            f"| {row['size']} | {_ms(ours['step_seconds'])} | {_ms(torch['step_seconds'])} | "
            f"{ratio['step_seconds']:.2f} | {_mib(ours['peak_rss'])} | {_mib(torch['peak_rss'])} | "
            f"{ratio['peak_rss']:.2f} |"
        )
    if heading:
        m = results["machine"]
        lines += [
            "",
            f"Measured {results['date']} at commit {results['revision']} on {m['cpu']}, {m['cores']} cores.",
            "",
            f"Rerun: `{results['command']}`",
        ]
    return "\n".join(lines)


def plot_growth(results: dict[str, Any], path: Path) -> None:
    """cost_growth.png: step time and peak RSS against the side, log-log, both sides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    growth = results["growth"]
    sizes = [row["size"] for row in growth["rows"]]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for side, label, marker in (("ours", "ours (ONNX Runtime)", "o"), ("torch", "PyTorch eager", "s")):
        rows = [row[side] for row in growth["rows"]]
        steps = [row["step_seconds"] for row in rows]
        mid = [step["median"] * 1000 for step in steps]
        below = [(step["median"] - step["min"]) * 1000 for step in steps]
        above = [(step["max"] - step["median"]) * 1000 for step in steps]
        time_axis.errorbar(sizes, mid, yerr=[below, above], marker=marker, capsize=3, label=label)
        memory_axis.plot(sizes, [row["peak_rss"] / MIB for row in rows], marker=marker, label=label)
    time_axis.set(title="time per ascent step", ylabel="ms (median, min-max bars)", yscale="log")
    memory_axis.set(title="peak resident memory", ylabel="MiB (whole process)", yscale="log")
    for axis in (time_axis, memory_axis):
        axis.set_xscale("log", base=2)
        axis.set_xticks(sizes, [str(size) for size in sizes])
        # Plain numbers at 1, 2 and 5 of each decade: a log axis often spans less than one decade here.
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.minorticks_off()
        axis.set_xlabel("picture side (px), square")
        axis.grid(True, which="major", alpha=0.3)
        axis.legend()
    machine = results["machine"]
    figure.suptitle(
        f"{growth['backbone']} at {', '.join(growth['layers'])}: {machine['cpu']}, "
        f"{results['config']['threads']} threads, {results['date'][:10]}"
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _serving_section(serving: dict[str, Any]) -> list[str]:
    s = serving
    overhead = s["wall_total"] / s["engine_total"] - 1
    return [
        "## Serving",
        "",
        f"{s['model']}, {s['image']} at {s['size']} px, default parameters, from `benchmarks.serving`: the "
        f"engine in-process against the same request through a `dreamstream serve` subprocess on loopback, "
        f"taking turns; median of {s['repeats']} each after one warm-up ({s['device']}, ONNX Runtime's default "
        "threads).",
        "",
        "| | in-process | served | served / in-process |",
        "| --- | ---: | ---: | ---: |",
        f"| whole dream (s) | {s['engine_total']:.3f} | {s['wall_total']:.3f} | "
        f"{s['wall_total'] / s['engine_total']:.3f} |",
        f"| time to first frame (s) | {s['engine_first']:.3f} | {s['wall_first']:.3f} | "
        f"{s['wall_first'] / s['engine_first']:.3f} |",
        f"| server-side ascent (s) | | {s['server_total']:.3f} | {s['server_total'] / s['engine_total']:.3f} |",
        "",
        f"Streaming overhead (client wall time over engine compute time): {overhead * 100:+.1f}% "
        f"({s['wall_total'] - s['engine_total']:+.3f} s per dream). Client wall time outside the server's ascent "
        f"(decoding, the last frame's encoding, transport): {s['outside']:.3f} s "
        f"({s['outside'] / s['wall_total'] * 100:.1f}% of the wall time).",
    ]


def _targets(results: dict[str, Any]) -> list[str]:
    config = results["config"]
    if (config["size"], config["octaves"], config["steps"]) != (512, 4, 10):
        return ["Issue 4's targets are judged on the full run (512 px, 4 octaves x 10 steps), not this one."]
    lines = ["## Against issue 4's CPU targets", ""]
    for dream in results.get("dreams", []):
        target = TARGET_RATIO.get(dream["backbone"])
        if target is None:
            continue
        ratio = dream["summary"]["ratio"]["dream_seconds"]
        cold = dream["summary"]["ratio"]["cold_dream_seconds"]
        lines.append(
            f"- {dream['backbone']} whole dream, ours / torch <= {target:.2f}: warm {ratio:.2f}, cold {cold:.2f} "
            f"({_met(ratio <= target)})"
        )
    if "serving" in results:
        s = results["serving"]
        overhead = s["wall_total"] / s["engine_total"] - 1
        lines.append(
            f"- streaming overhead < {TARGET_OVERHEAD:.0%}: {overhead * 100:+.1f}% ({_met(overhead < TARGET_OVERHEAD)})"
        )
    return lines if len(lines) > 2 else []


def _spread(values: dict[str, float]) -> str:
    return f"{values['median']:.2f} {_range(values)}"


def _range(values: dict[str, float]) -> str:
    return f"[{values['min']:.2f}-{values['max']:.2f}]"


def _ms(values: dict[str, float]) -> str:
    return f"{values['median'] * 1000:.0f} [{values['min'] * 1000:.0f}-{values['max'] * 1000:.0f}]"


def _mib(value: float) -> str:
    return f"{value / MIB:.0f}"


def _threads(side: dict[str, Any]) -> str:
    return ", ".join(str(count) for count in side["threads"])


def _psnrs(values: list[float | None]) -> str:
    return ", ".join("identical" if value is None else f"{value:.1f}" for value in values) + " dB"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _met(value: bool) -> str:
    return "met" if value else "not met"
