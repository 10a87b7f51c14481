"""The API's contract with other teams, checked by buf (npm @bufbuild/buf, installed by scripts/test):
`buf lint` (STANDARD and COMMENTS rules, buf.yaml) and `buf breaking` against the last released
API, proto/released/. A release adds its own image there (see the README's API section)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROTO = Path("proto/dreamstream/v1/dream.proto")


def last_release() -> Path:
    """The newest image in proto/released/ (dreamstream-X.Y.Z.json), relative to the repository."""
    images = (REPO / "proto" / "released").glob("dreamstream-*.json")
    newest = max(images, key=lambda image: tuple(int(part) for part in image.stem.split("-")[1].split(".")))
    return newest.relative_to(REPO)


RELEASED = last_release()


@pytest.fixture(scope="module")
def buf() -> str:
    buf = REPO / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        pytest.skip("buf is absent: scripts/test installs it with the other npm packages (npm ci)")
    return str(buf)


def run_buf(buf: str, workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([buf, *args], cwd=workspace, capture_output=True, text=True, timeout=120)


@pytest.fixture
def workspace_copy(tmp_path: Path) -> Path:
    """buf.yaml, proto/ and the released image copied aside, for a change the real API must never get."""
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    return tmp_path


def edit(proto: Path, old: str, new: str) -> None:
    text = proto.read_text()
    assert old in text, f"{old!r} is no longer in {proto.name}: update this test"
    proto.write_text(text.replace(old, new, 1))


def test_the_api_passes_buf_lint(buf: str) -> None:
    linted = run_buf(buf, REPO, "lint")
    assert linted.returncode == 0, f"buf lint:\n{linted.stdout}{linted.stderr}"


def test_the_api_is_backward_compatible_with_the_last_release(buf: str) -> None:
    checked = run_buf(buf, REPO, "breaking", "--against", str(RELEASED))
    assert checked.returncode == 0, f"buf breaking against {RELEASED}:\n{checked.stdout}{checked.stderr}"


def test_lint_refuses_a_field_without_a_comment(buf: str, workspace_copy: Path) -> None:
    edit(workspace_copy / PROTO, "  ImageFormat format = 13;\n", "  ImageFormat format = 13;\n  bool sparkle = 99;\n")

    linted = run_buf(buf, workspace_copy, "lint")

    assert linted.returncode != 0
    assert '"sparkle"' in linted.stdout and "comment" in linted.stdout


def test_breaking_refuses_a_renamed_field(buf: str, workspace_copy: Path) -> None:
    edit(workspace_copy / PROTO, "int64 seed = 9;", "int64 random_seed = 9;")

    checked = run_buf(buf, workspace_copy, "breaking", "--against", str(RELEASED))

    assert checked.returncode != 0
    assert 'changed name from "seed" to "random_seed"' in checked.stdout


def test_breaking_refuses_a_field_whose_number_is_reused_with_another_type(buf: str, workspace_copy: Path) -> None:
    edit(workspace_copy / PROTO, "int32 octaves = 4;", "float octaves = 4;")

    checked = run_buf(buf, workspace_copy, "breaking", "--against", str(RELEASED))

    assert checked.returncode != 0
    assert 'Field "4" with name "octaves" on message "DreamRequest" changed type' in checked.stdout
