"""The README's measured figures, generated from the newest results files so that none can go stale.

Every block of README.md between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->`
is what `RENDERERS[NAME]` makes of `benchmarks/results/`: the figures and the line
saying which commit, date, machine and command measured them. After a benchmark
run, `python -m benchmarks.figures` rewrites the blocks; tests/test_figures.py
fails when a block differs from what the results files render, or when a results
file lacks its provenance.

    python -m benchmarks.figures [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.provenance import REPO, RESULTS

README = REPO / "README.md"
MIB = 2**20
_BLOCK = re.compile(r"(<!-- figures:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.DOTALL)


def _load(name: str, folder: Path) -> dict[str, Any]:
    return json.loads((folder / name).read_text())


def measured_by(provenance: dict[str, Any]) -> str:
    """One line: which commit, when, on what, and how to rerun it."""
    m = provenance["machine"]
    load = m.get("load_average_1min")
    busy = f", load average {load:.1f}" if load is not None else ""
    return (
        f"Measured at commit {provenance['commit']} on {provenance['date'][:10]}, {m['cpu']}, "
        f"{m['cores']} cores{busy}, with `{provenance['command']}`."
    )


def served(folder: Path) -> list[str]:
    data = _load("served.json", folder)
    f = data["figures"]
    first = statistics.median(f["ours_first_frame_seconds"])
    return [
        "| served dream | first frame | PyTorch eager | ours / torch | server peak memory |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {f['ours_median_seconds']:.2f} s | {first:.2f} s | {f['torch_median_seconds']:.2f} s | "
        f"**{f['ratio']:.2f}** | {f['server_peak_mib']:.0f} MiB |",
        "",
        f"Median of {f['repeats']} dreams a side, {f['threads']} threads each; the ratio per repeat "
        f"{', '.join(f'{ratio:.2f}' for ratio in f['ratio_per_repeat'])} (on a shared machine a neighbour's load "
        "slows either side, torch's threads most); bar: ratio at most "
        f"{f['bar']['ratio']}, peak at most {f['bar']['peak_mib']} MiB ({'met' if f['passed'] else 'not met'}). "
        + measured_by(data["provenance"]),
    ]


def concurrency(folder: Path) -> list[str]:
    from benchmarks.concurrency import table

    data = _load("concurrency.json", folder)
    f = data["figures"]
    return [
        *table(f["rows"]),
        "",
        f"efficientnet-lite0, {f['image']} at {f['size']} px, default dream, {f['dreams_per_stream']} dreams per "
        "stream in a row; first frame: the median from the call to the first frame, the wait for a slot "
        "included. " + measured_by(data["provenance"]),
    ]


def _suite(folder: Path) -> dict[str, Any]:
    results = _load("results.json", folder)
    provenance = {
        "commit": results["revision"],
        "date": results["date"],
        "machine": results["machine"],
        "command": results["command"],
    }
    return {**results, "provenance": provenance}


def dreams(folder: Path) -> list[str]:
    results = _suite(folder)
    config = results["config"]
    lines = ["| dream | ours | PyTorch eager | ours / torch |", "| --- | ---: | ---: | ---: |"]
    for dream in results["dreams"]:
        s = dream["summary"]
        layers = ", ".join(dream["layers"]) if dream["backbone"] == "googlenet-bvlc" else "its default layers"
        where = f"at `{layers}`" if dream["backbone"] == "googlenet-bvlc" else f"at {layers}"
        lines.append(
            f"| {dream['backbone']} {where} | {s['ours']['dream_seconds']['median']:.2f} s | "
            f"{s['torch']['dream_seconds']['median']:.2f} s | **{s['ratio']['dream_seconds']:.2f}** |"
        )
    lines += [
        "",
        f"{Path(config['image']).name} at {config['size']} px, {config['octaves']} octaves x {config['steps']} steps, "
        f"median of {config['repeats']} fresh processes a side, {config['threads']} threads each, CPU provider. "
        + measured_by(results["provenance"]),
    ]
    return lines


def serving(folder: Path) -> list[str]:
    results = _suite(folder)
    s = results["serving"]
    overhead = s["wall_total"] / s["engine_total"] - 1
    return [
        f"Served through gRPC on loopback ({s['model']}, {s['size']} px), the first octave reaches the client "
        f"after {s['wall_first']:.2f} s and the whole dream takes {overhead * 100:.0f} % longer than the same "
        f"dream in-process (`python -m benchmarks.serving`; median of {s['repeats']}). "
        + measured_by(results["provenance"]),
    ]


def warm_start(folder: Path) -> list[str]:
    data = _load("warm_start.json", folder)
    f = data["figures"]
    lines = [
        "| warm start | first dream wall | first dream CPU | second dream wall | second dream CPU |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for side, cells in f["medians"].items():
        lines.append(f"| {side} | " + " | ".join(f"{seconds:.3f} s" for seconds in cells) + " |")
    return [
        *lines,
        "",
        f"{f['image']} at {f['size']} px, {f['dream']}, median of {f['repeats']} fresh processes a side. "
        + measured_by(data["provenance"]),
    ]


def controls(folder: Path) -> list[str]:
    data = _load("controls.json", folder)
    f = data["figures"]
    plain = f["rows"][0]["seconds"]
    costs = ", ".join(f"{row['control']} x{row['seconds'] / plain:.2f}" for row in f["rows"][1:])
    return [
        f"Each control's time against the plain dream's ({plain:.2f} s; {f['dream']}): {costs}. "
        + measured_by(data["provenance"])
    ]


def flicker(folder: Path) -> list[str]:
    data = _load("flicker.json", folder)
    f = data["figures"]
    alone = f["rows"][1]["flicker"]
    lines = ["| frames | flicker | / alone |", "| --- | ---: | ---: |"]
    for row in f["rows"]:
        ratio = f"{row['flicker'] / alone:.2f}"
        shown = f"**{ratio}**" if row is f["rows"][-1] else ratio  # the flow's: the figure the section is about
        lines.append(f"| {row['frames']} | {row['flicker']:.2f} | {shown} |")
    return [*lines, "", measured_by(data["provenance"])]


def arena(folder: Path) -> list[str]:
    from benchmarks.arena import table

    data = _load("arena.json", folder)
    f = data["figures"]
    return [
        *table(f),
        "",
        f"Dream: the median of {f['rounds']} (wall time is the machine's load as much as ours; the CPU time is "
        f"the steadier), {f['threads']} threads. Burst: four steps at once at {f['burst_side']} px; 5 layers: then "
        "one step on each of four other layer graphs; peaks over the RSS after loading, held after glibc's trim. "
        + measured_by(data["provenance"]),
    ]


def step_memory(folder: Path) -> list[str]:
    data = _load("step_memory.json", folder)
    lines = ["| model | layer | side | peak over the RSS before | the estimate |", "| --- | --- | ---: | ---: | ---: |"]
    for row in data["figures"]["rows"]:
        lines.append(
            f"| {row['model']} | `{row['layer']}` | {row['side']} px | {row['peak_mib']:.0f} MiB | "
            f"{row['allowed_mib']:.0f} MiB |"
        )
    return [*lines, "", measured_by(data["provenance"])]


RENDERERS: dict[str, Callable[[Path], list[str]]] = {
    "served": served,
    "concurrency": concurrency,
    "dreams": dreams,
    "serving": serving,
    "warm_start": warm_start,
    "arena": arena,
    "step_memory": step_memory,
    "controls": controls,
    "flicker": flicker,
}


def blocks(text: str) -> dict[str, str]:
    """{name: body} of every figures block of `text`."""
    return {match["name"]: match["body"] for match in _BLOCK.finditer(text)}


def rendered(name: str, folder: Path = RESULTS) -> str:
    """What block `name` must hold, from the results files in `folder`."""
    return "\n".join(RENDERERS[name](folder)) + "\n"


def regenerate(text: str, folder: Path = RESULTS) -> str:
    """`text` with every figures block rendered afresh from `folder`."""

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise SystemExit(f"README.md has a figures block {name!r} that no renderer makes: {', '.join(RENDERERS)}")
        return match.group(1) + rendered(name, folder) + match.group(4)

    return _BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether README.md is up to date (exit 1 if not)")
    args = parser.parse_args(argv)
    text = README.read_text()
    fresh = regenerate(text)
    if args.check:
        stale = [name for name, body in blocks(text).items() if body != blocks(fresh)[name]]
        print("README.md figures: " + (f"stale blocks {', '.join(stale)}" if stale else "up to date"))
        return 1 if stale else 0
    README.write_text(fresh)
    print(f"README.md: {len(blocks(fresh))} figures blocks rendered from {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
