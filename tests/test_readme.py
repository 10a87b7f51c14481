"""The README's links and pictures point at files the repository has."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def local_targets(markdown: Path) -> list[str]:
    """Targets of [text](target) and ![alt](target) that are paths, not addresses or anchors."""
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown.read_text())
    return [target.split("#")[0] for target in targets if not re.match(r"[a-z]+:|#", target)]


def test_every_link_and_picture_of_the_readme_exists() -> None:
    missing = [target for target in local_targets(REPO / "README.md") if not (REPO / target).exists()]
    assert missing == []


def test_every_link_of_the_benchmark_reports_exists() -> None:
    results = REPO / "benchmarks" / "results"
    missing = [
        f"{report.name}: {target}"
        for report in results.glob("*.md")
        for target in local_targets(report)
        if not (results / target).exists()
    ]
    assert missing == []
