"""The committed Python stubs are exactly what grpc_tools makes of dream.proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "proto"
PROTO = Path("dreamstream/v1/dream.proto")
GENERATED = ("dream_pb2.py", "dream_pb2.pyi", "dream_pb2_grpc.py")


def test_generated_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the stubs")
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            str(PROTO_ROOT / PROTO),
        ],
        check=True,
    )  # fmt: skip
    for name in GENERATED:
        committed = (PROTO_ROOT / PROTO.parent / name).read_text()
        fresh = (tmp_path / PROTO.parent / name).read_text()
        assert committed == fresh, (
            f"{name} is out of date with dream.proto: regenerate with "
            "python -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto "
            "--grpc_python_out=proto proto/dreamstream/v1/dream.proto"
        )


def test_every_field_of_the_api_is_documented() -> None:
    lines = (PROTO_ROOT / PROTO).read_text().splitlines()
    undocumented = [
        line.strip()
        for above, line in zip(lines, lines[1:], strict=False)
        if _is_field(line) and not above.strip().startswith("//")
    ]
    assert not undocumented, f"fields without a comment right above them in dream.proto: {undocumented}"


def _is_field(line: str) -> bool:
    text = line.strip()
    return text.endswith(";") and "=" in text and not text.startswith(("//", "syntax", "option"))
