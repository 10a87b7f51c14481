"""The README's measured figures are the newest results files' (benchmarks/figures.py renders them).

A figure typed into the README by hand, or a results file measured again without
`python -m benchmarks.figures` afterwards, fails here. Nothing is measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import figures
from benchmarks.provenance import RESULTS

README = Path(__file__).resolve().parents[1] / "README.md"
# What the benchmarks write (tiling.json is the tiling test's own record, held by tests/test_tiling.py).
BENCHMARK_RESULTS = [
    RESULTS / f"{name}.json"
    for name in ("served", "concurrency", "results", "warm_start", "arena", "step_memory", "controls", "flicker")
]


def test_every_renderer_has_its_block_in_the_readme() -> None:
    assert sorted(figures.blocks(README.read_text())) == sorted(figures.RENDERERS)


@pytest.mark.parametrize("name", sorted(figures.RENDERERS))
def test_each_figures_block_of_the_readme_is_what_the_newest_results_render(name: str) -> None:
    quoted = figures.blocks(README.read_text())[name]
    assert quoted == figures.rendered(name), (
        f"README.md's {name} figures differ from benchmarks/results: run `python -m benchmarks.figures`"
    )


@pytest.mark.parametrize("path", BENCHMARK_RESULTS, ids=[path.name for path in BENCHMARK_RESULTS])
def test_every_results_file_names_its_commit_date_machine_and_command(path: Path) -> None:
    data = json.loads(path.read_text())
    # The suite's results.json keeps its own older layout: the same facts at the top level.
    provenance = data.get("provenance") or {key: data[key] for key in ("revision", "date", "machine", "command")}
    commit = provenance.get("commit", provenance.get("revision"))
    assert commit and commit != "unknown (not a git checkout)", path.name
    assert provenance["date"][:4].isdigit() and provenance["command"].startswith("python -m benchmarks")
    assert provenance["machine"]["cpu"] and provenance["machine"]["cores"] >= 1


def test_a_figure_edited_by_hand_is_caught() -> None:
    text = README.read_text()
    body = figures.blocks(text)["served"]
    edited = text.replace(body, body.replace("|", "| 9.99 s |", 1), 1)
    assert figures.blocks(edited)["served"] != figures.rendered("served")
    assert figures.blocks(figures.regenerate(edited))["served"] == figures.rendered("served")
