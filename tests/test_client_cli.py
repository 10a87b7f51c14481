"""The `dreamstream` command against a real server: files written, and one-line errors."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from dreamstream.cli import main
from dreamstream.client import DreamClient
from dreamstream.client.cli import parse_layers
from dreamstream.client.events import Frame, Progress
from dreamstream.client.progress import ProgressBar
from dreamstream.cmdline import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE

SMALL = ["--max-size", "64", "--octaves", "3", "--steps", "2"]
# Runs the console script's function in a fresh interpreter, whether or not the
# `dreamstream` script is on PATH.
CLI = [
    sys.executable,
    "-c",
    "import sys; from dreamstream.cli import main; sys.exit(main())",
]


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert "Traceback" not in stderr
    return lines[0]


def test_dream_writes_the_result_each_octave_and_a_gif(server, coffee: Path, tmp_path: Path, capsys) -> None:
    out, octaves, gif = tmp_path / "dream.png", tmp_path / "octaves", tmp_path / "dream.gif"
    code = main(
        ["dream", str(coffee), "-o", str(out), "--server", server.target, *SMALL,
         "--save-octaves", str(octaves), "--gif", str(gif)]
    )  # fmt: skip
    assert code == 0
    with Image.open(out) as result:
        assert result.format == "PNG" and result.size == (64, 43)
    assert sorted(path.name for path in octaves.iterdir()) == [
        "octave-1.png", "octave-2.png", "octave-3.png",
    ]  # fmt: skip
    assert (octaves / "octave-3.png").read_bytes() == out.read_bytes()
    with Image.open(gif) as animation:
        assert animation.n_frames == 3
        assert animation.size == (64, 43)
    assert f"wrote {out}" in capsys.readouterr().err


def test_the_output_suffix_chooses_the_format(server, coffee: Path, tmp_path: Path) -> None:
    out = tmp_path / "dream.jpg"
    assert main(["dream", str(coffee), "-o", str(out), "--server", server.target, "-q", *SMALL]) == 0
    with Image.open(out) as result:
        assert result.format == "JPEG"


def test_dream_on_noise(server, tmp_path: Path) -> None:
    out = tmp_path / "noise.webp"
    args = ["dream", "--noise", "80x48", "-o", str(out), "--server", server.target, "-q"]
    assert main([*args, "--octaves", "2", "--steps", "2", "--seed", "3"]) == 0
    with Image.open(out) as result:
        assert result.format == "WEBP" and result.size == (80, 48)


def test_an_unreachable_server_is_one_line_naming_the_address(coffee: Path, tmp_path: Path, capsys) -> None:
    code = main(["dream", str(coffee), "-o", str(tmp_path / "x.png"), "--server", "127.0.0.1:1"])
    assert code == EXIT_UNREACHABLE
    line = one_line_error(capsys.readouterr().err)
    assert "cannot reach a dreamstream server at 127.0.0.1:1" in line


def test_a_refusal_is_one_line_with_the_status_and_the_servers_words(
    server, coffee: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "x.png"
    code = main(["dream", str(coffee), "-o", str(out), "--server", server.target, "--layers", "nope"])
    assert code == EXIT_REFUSED
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("dreamstream: INVALID_ARGUMENT: unknown layer 'nope'")
    assert "its layers are stem" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.png", "-o", "out.png"], "missing.png is not a file"),
        (["{coffee}", "-o", "out.bmp"], "cannot tell the format of out.bmp"),
        (["{coffee}", "-o", "out.png", "--layers", "block3:lots"], "is not NAME:WEIGHT"),
        (["{coffee}", "-o", "out.png", "--noise", "64x64"], "INPUT or --noise, not both"),
        (["-o", "out.png", "--noise", "big"], "WIDTHxHEIGHT"),
        (["-o", "out.png"], "give a picture to dream on"),
        (["{coffee}", "-o", "missing/out.png"], "-o missing/out.png: folder missing does not exist: create it first"),
        (["{coffee}", "-o", "folder.png"], "-o folder.png is a folder: give a file name"),
        (["{coffee}", "-o", "out.png", "--gif", "no/such/x.gif"], "--gif no/such/x.gif: folder no/such does not"),
        (["{coffee}", "-o", "out.png", "--gif", "x.png"], "--gif x.png: name it .gif"),
        (["{coffee}", "-o", "out.png", "--save-octaves", "out.png/octaves"], "--save-octaves out.png/octaves: cannot"),
        (["{coffee}", "-o", "out.png", "--token-file", "no-token"], "cannot read the token file no-token"),
    ],
)
def test_usage_mistakes_are_one_line_and_exit_2_before_any_dream(
    coffee: Path, tmp_path: Path, monkeypatch, capsys, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out.png").write_bytes(b"an earlier result")
    (tmp_path / "folder.png").mkdir()
    args = [arg.format(coffee=coffee) for arg in args]
    # 127.0.0.1:1 answers nothing: a mistake found after trying to dream would exit EXIT_UNREACHABLE.
    assert main(["dream", *args, "--server", "127.0.0.1:1"]) == EXIT_USAGE
    assert message in one_line_error(capsys.readouterr().err)


def test_layers_parse_into_names_and_weights() -> None:
    assert parse_layers("block10:1,block12:0.5") == {"block10": 1.0, "block12": 0.5}
    assert parse_layers("inception_4c/output") == {"inception_4c/output": 1.0}


def test_models_lists_each_model_with_its_layers(server, capsys) -> None:
    assert main(["models", "--server", server.target]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^efficientnet-lite0 \(default\)", out, re.MULTILINE)
    assert re.search(r"^\s+block10\s+\d+\s+\d+\s+1$", out, re.MULTILINE)


def test_the_progress_line_shows_octave_step_loss_and_time_left() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = ProgressBar(terminal)
    bar.update(Progress(octave=2, octaves=4, step=3, steps=10, loss=12.5, elapsed=30.0, done=0.5))
    bar.frame(Frame(2, 4, 64, 43, b"", "png", False))
    bar.close()
    text = terminal.getvalue()
    assert "octave 2/4 step 3/10" in text and "loss 12.5" in text
    assert "0:30 elapsed, 0:30 left" in text
    assert "octave 2/4: 64x43\n" in text


@pytest.mark.parametrize("columns", [80, 60, 40])
def test_the_progress_line_fits_the_terminal_and_is_redrawn_in_place(columns: int) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = ProgressBar(terminal, columns=columns)
    for step in range(1, 4):
        bar._drawn_at = 0.0  # draw every step (the bar redraws at most ten times a second)
        bar.update(Progress(12, 12, step, 1000, 123456.7, 3599.0 * step, step / 3000))
    drawn = terminal.getvalue().split("\r")[1:]
    assert len(drawn) == 3 and "\n" not in terminal.getvalue()
    for line in drawn:
        text = line.removesuffix("\x1b[K")
        assert text.startswith("octave 12/12 step") and len(text) < columns, text


def test_the_client_commands_never_import_the_server_or_export_dependencies(
    server, coffee: Path, tmp_path: Path
) -> None:
    # The light install has no onnx, onnxruntime or torch: `dream` and `models` must not
    # need them (a real dream through a real server), and `serve` must say which extra to install.
    block = "import sys; sys.modules.update(onnxruntime=None, onnx=None, torch=None); "
    run = block + "from dreamstream.cli import main; sys.exit(main(sys.argv[1:]))"
    out = tmp_path / "light.png"
    dream = subprocess.run(
        [sys.executable, "-c", run, "dream", str(coffee), "-o", str(out), "--server", server.target, "-q", *SMALL],
        capture_output=True,
        text=True,
    )
    assert dream.returncode == 0, dream.stderr
    assert out.is_file()
    models = subprocess.run(
        [sys.executable, "-c", run, "models", "--server", "127.0.0.1:1"],
        capture_output=True,
        text=True,
    )
    assert models.returncode == EXIT_UNREACHABLE
    assert "cannot reach a dreamstream server" in one_line_error(models.stderr)
    serve = subprocess.run([sys.executable, "-c", run, "serve"], capture_output=True, text=True)
    assert serve.returncode == 2
    line = one_line_error(serve.stderr)
    assert "needs the server extra: pip install 'dreamstream[server]'" in line

    export = subprocess.run(
        [sys.executable, "-c", run, "export", "efficientnet-lite0", "--out", "unused"],
        capture_output=True,
        text=True,
    )
    assert export.returncode == 2
    assert "needs the export extra and a runtime: pip install 'dreamstream[server,export]'" in one_line_error(
        export.stderr
    )


def test_serve_without_models_is_one_line_saying_how_to_export(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    serve = subprocess.run(
        [*CLI, "serve", "--models", str(empty), "--host", "127.0.0.1", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode == 2
    error = [line for line in serve.stderr.splitlines() if line.startswith("dreamstream:")]
    assert error == [
        f"dreamstream: error: no exported models in {empty}: export one with "
        f"`dreamstream export efficientnet-lite0 --out {empty}`, or pass --models"
    ]
    assert "Traceback" not in serve.stderr


def test_serve_runs_a_server_that_dream_can_use_and_stops_on_sigterm(
    lite0_dir: Path, coffee: Path, tmp_path: Path
) -> None:
    process = subprocess.Popen(
        [*CLI, "serve", "--models", str(lite0_dir.parent), "--host", "127.0.0.1", "--port", "0",
         "--device", "cpu"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        port = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = match.group(1)
            if "serving" in line:
                break
        assert port, "the server never said where it listens"
        out = tmp_path / "dream.png"
        assert main(["dream", str(coffee), "-o", str(out), "--server", f"127.0.0.1:{port}", *SMALL]) == 0
        assert out.is_file()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_retries_wait_out_a_full_server_and_say_so(start_server, repository, tmp_path: Path, capsys) -> None:
    tight = start_server(repository, max_concurrent=1, max_queue=0)
    holding = threading.Event()

    def hold_the_one_slot() -> None:
        with DreamClient(tight.target) as holder:
            for _ in holder.dream(None, width=64, height=64, octaves=1, steps_per_octave=60):
                holding.set()

    holder = threading.Thread(target=hold_the_one_slot)
    holder.start()
    assert holding.wait(timeout=60)
    out = tmp_path / "dream.png"
    code = main(["dream", "--noise", "64x48", "-o", str(out), "--server", tight.target, "--retries", "5", "-q", *SMALL])
    holder.join(timeout=60)

    assert code == 0 and out.exists()
    assert "dreamstream: RESOURCE_EXHAUSTED (QUEUE_FULL): trying again in" in capsys.readouterr().err
