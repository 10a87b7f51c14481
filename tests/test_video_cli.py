"""`dreamstream video` and `dreamstream zoom` against a real server, on clips made from the real photographs."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import pytest
from conftest import shared_image
from PIL import Image

from benchmarks.clips import audio_seconds, camera_clip
from benchmarks.flicker import as_array, flicker
from dreamstream.cli import main
from dreamstream.client.animation_cli import FramesBar
from dreamstream.client.videofile import probe, read_video

TINY = ["--max-size", "64", "--octaves", "1", "--steps", "2", "-q"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 64x48 frames at 12 fps of a camera moving over a photograph, with a sine tone."""
    folder = tmp_path_factory.mktemp("clip")
    return camera_clip(folder / "clip.mp4", shared_image("chelsea.png"), frames=8, size=(64, 48), fps=12)


def test_video_keeps_the_frame_count_the_frame_rate_and_the_sound(server, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    code = main(["video", str(clip), "-o", str(out), "--server", server.target, "--blend", "0.5", "--flow", *TINY])
    assert code == 0
    written = probe(out)
    assert (written.frames, written.fps, (written.width, written.height)) == (8, Fraction(12), (64, 48))
    assert written.has_audio
    assert audio_seconds(out) == pytest.approx(audio_seconds(clip), abs=0.1)


def test_a_frame_range_keeps_those_frames_and_their_sound(server, clip: Path, tmp_path: Path) -> None:
    out, frames_dir = tmp_path / "part.mkv", tmp_path / "frames"
    code = main(
        ["video", str(clip), "-o", str(out), "--server", server.target, "--start-frame", "2", "--end-frame", "5",
         "--blend", "loop", "--layers-loop", "block2,block4", "--frames-dir", str(frames_dir), *TINY]
    )  # fmt: skip
    assert code == 0
    assert len(list(read_video(out))) == 3
    assert audio_seconds(out) == pytest.approx(3 / 12, abs=0.1)
    assert sorted(path.name for path in frames_dir.iterdir()) == [
        "frame-000000.png", "frame-000001.png", "frame-000002.png",
    ]  # fmt: skip
    with Image.open(frames_dir / "frame-000000.png") as first:
        assert first.size == (64, 48)


def test_blending_along_the_flow_flickers_less_than_frames_dreamed_alone(server, clip: Path, tmp_path: Path) -> None:
    # The default dream (4 octaves x 10 steps), as `dreamstream video` runs it, on tiny frames.
    default_dream = ["--max-size", "64", "-q"]
    inputs = [as_array(frame) for frame in read_video(clip)]

    def flicker_of(*flags: str) -> float:
        out = tmp_path / f"out{len(flags)}.mp4"
        assert main(["video", str(clip), "-o", str(out), "--server", server.target, *flags, *default_dream]) == 0
        return flicker(inputs, [as_array(frame) for frame in read_video(out)])

    assert flicker_of("--blend", "0.5", "--flow") < 0.8 * flicker_of("--blend", "0")


def test_zoom_writes_a_gif_of_the_frames(server, tmp_path: Path) -> None:
    out = tmp_path / "zoom.gif"
    photo = shared_image("rocket.jpg")
    code = main(["zoom", str(photo), "-o", str(out), "--frames", "4", "--rotate", "1", "--shift", "2,0",
                 "--server", server.target, *TINY])  # fmt: skip
    assert code == 0
    with Image.open(out) as animation:
        assert animation.n_frames == 4


def test_zoom_writes_a_video_at_the_frame_rate_asked(server, coffee: Path, tmp_path: Path) -> None:
    out = tmp_path / "zoom.mp4"
    assert (
        main(["zoom", str(coffee), "-o", str(out), "--frames", "3", "--fps", "8", "--server", server.target, *TINY])
        == 0
    )
    written = probe(out)
    assert (written.frames, written.fps, written.has_audio) == (3, Fraction(8), False)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["video", "{clip}", "-o", "{tmp}/out.avi"], "name it .mp4"),
        (["video", "{clip}", "-o", "{tmp}/out.mp4", "--blend", "lots"], "--blend lots"),
        (["video", "{clip}", "-o", "{tmp}/out.mp4", "--start-frame", "4", "--end-frame", "2"], "not after"),
        (["video", "{tmp}/missing.mp4", "-o", "{tmp}/out.mp4"], "is not a file"),
        (["zoom", "{clip}", "-o", "{tmp}/zoom.png", "--frames", "2"], "name it .gif"),
        (["zoom", "{photo}", "-o", "{tmp}/zoom.gif", "--frames", "2", "--shift", "3"], "--shift 3"),
        (["video", "{clip}", "-o", "{tmp}/no/such/folder/out.mp4"], "does not exist"),
        (["zoom", "{photo}", "-o", "{tmp}/no/zoom.gif", "--frames", "2"], "does not exist"),
    ],
)
def test_bad_command_lines_are_one_line_errors(
    server, clip: Path, coffee: Path, tmp_path: Path, capsys, arguments: list[str], message: str
) -> None:
    filled = [arg.format(clip=clip, tmp=tmp_path, photo=coffee) for arg in arguments]
    assert main([*filled, "--server", server.target, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_server_refusal_is_one_line_with_its_status(server, clip: Path, tmp_path: Path, capsys) -> None:
    code = main(["video", str(clip), "-o", str(tmp_path / "o.mp4"), "--layers-loop", "nope", "--server", server.target,
                 *TINY])  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "INVALID_ARGUMENT" in err[0] and "unknown layer" in err[0], err


def test_the_frames_bar_shows_frames_done_and_time_left() -> None:
    stream = io.StringIO()
    bar = FramesBar(4, stream)
    bar.frame(1)
    bar.frame(2)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("frame 1/4 [") and "25%" in lines[0] and "left" in lines[0]
    assert lines[1].startswith("frame 2/4 [") and "50%" in lines[1]
