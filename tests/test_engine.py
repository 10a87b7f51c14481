"""The ascent engine on the real efficientnet-lite0 with real ONNX Runtime sessions."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamstream.server import imaging
from dreamstream.server.engine import DreamCancelled, DreamEngine, DreamSpec, Octave, Step
from dreamstream.server.engine.octaves import octave_sizes
from dreamstream.server.models import DEFAULT_MODEL
from dreamstream.server.refusals import InvalidRequest, UnknownModel


def picture(path: Path, max_size: int = 96) -> np.ndarray:
    return imaging.decode(path.read_bytes(), max_size)


def dream(engine: DreamEngine, image: np.ndarray | None, size: tuple[int, int] | None = None, **options) -> list:
    return list(engine.run(engine.plan(DreamSpec(pixels=image, noise_size=size, **options))))


def octaves_of(events: list[Step | Octave]) -> list[Octave]:
    return [event for event in events if isinstance(event, Octave)]


def test_octave_sizes_shrink_by_the_scale_and_end_at_the_picture_size() -> None:
    sizes = octave_sizes(400, 600, octaves=4, scale=1.4, min_size=1)
    assert sizes[-1] == (400, 600)
    assert sizes == ((146, 219), (204, 306), (286, 429), (400, 600))


def test_no_octave_is_smaller_than_the_models_min_size() -> None:
    sizes = octave_sizes(100, 250, octaves=6, scale=2.0, min_size=64)
    assert all(min(size) >= 64 for size in sizes)
    assert sizes[0] == (64, 160)  # the aspect ratio is kept
    assert sizes[-1] == (100, 250)


def test_a_dream_streams_its_steps_then_a_frame_per_octave_at_the_planned_sizes(
    engine: DreamEngine, coffee: Path
) -> None:
    image = picture(coffee)
    plan = engine.plan(DreamSpec(pixels=image, octaves=3, steps_per_octave=2))
    events = list(engine.run(plan))

    kinds = [type(event).__name__ for event in events]
    assert kinds == ["Step", "Step", "Octave"] * 3
    frames = octaves_of(events)
    assert [frame.image.shape[:2] for frame in frames] == list(plan.sizes)
    assert plan.sizes[-1] == image.shape[:2]
    assert [frame.final for frame in frames] == [False, False, True]
    steps = [event for event in events if isinstance(event, Step)]
    assert [(s.octave, s.step) for s in steps] == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
    assert steps[-1].done == pytest.approx(1.0)
    assert all(a.done < b.done for a, b in zip(steps, steps[1:], strict=False))


def test_the_dream_raises_the_loss_at_every_octave(engine: DreamEngine, coffee: Path) -> None:
    # Default jitter: the loss of a jittered step is noisy, so compare the first step of
    # each octave with the mean of its last three.
    events = dream(engine, picture(coffee, 128), octaves=3, steps_per_octave=10, seed=1)
    for octave in (1, 2, 3):
        losses = [e.loss for e in events if isinstance(e, Step) and e.octave == octave]
        assert np.mean(losses[-3:]) > losses[0] * 1.1, f"octave {octave}: {losses}"


def test_jitter_is_undone_so_the_step_follows_the_unjittered_gradient(engine: DreamEngine, coffee: Path) -> None:
    # A CNN is nearly shift-equivariant, so a jittered step rolled back in place moves
    # the pixels the way an unjittered step does; a step left rolled (or rolled back
    # the wrong way) is uncorrelated with it. block0 is shallow enough to be nearly
    # equivariant and deep enough to be interesting.
    image = picture(coffee)

    def update(jitter: int, seed: int) -> np.ndarray:
        events = dream(engine, image, layers={"block0": 1.0}, octaves=1, steps_per_octave=1, jitter=jitter, seed=seed)
        return octaves_of(events)[-1].image - image

    still = update(0, 0)
    for seed in (1, 2, 3):
        jittered = update(32, seed)
        assert np.corrcoef(still.ravel(), jittered.ravel())[0, 1] > 0.3
        # and the picture itself stays where it was: no pixel moved by the roll
        assert np.abs(jittered).mean() < 0.02


def test_the_same_seed_gives_the_same_picture(engine: DreamEngine, coffee: Path) -> None:
    image = picture(coffee)
    first = octaves_of(dream(engine, image, octaves=2, steps_per_octave=3, seed=7))[-1].image
    again = octaves_of(dream(engine, image, octaves=2, steps_per_octave=3, seed=7))[-1].image
    other = octaves_of(dream(engine, image, octaves=2, steps_per_octave=3, seed=8))[-1].image
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).mean() > 1e-3


def test_without_a_picture_the_dream_starts_from_seeded_noise(engine: DreamEngine) -> None:
    first = octaves_of(dream(engine, None, size=(48, 80), octaves=2, steps_per_octave=2, seed=3))[-1].image
    again = octaves_of(dream(engine, None, size=(48, 80), octaves=2, steps_per_octave=2, seed=3))[-1].image
    other = octaves_of(dream(engine, None, size=(48, 80), octaves=2, steps_per_octave=2, seed=4))[-1].image
    assert first.shape == (48, 80, 3)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).mean() > 1e-3
    assert first.std() > 0.01  # not a flat grey


def test_a_faint_dream_keeps_the_originals_sharpness(engine: DreamEngine, coffee: Path) -> None:
    # The detail trick: the last octave starts from the full-size original plus the
    # upscaled detail, not from an upscaled (blurred) small picture.
    image = picture(coffee, 128)
    frames = octaves_of(dream(engine, image, octaves=4, steps_per_octave=2, step_size=1e-4))
    smallest = frames[0].image.shape[1::-1]
    blurred = imaging.to_pil(image).resize(smallest).resize(image.shape[1::-1])
    blur_error = np.abs(np.asarray(blurred) / 255.0 - image).mean()
    assert np.abs(frames[-1].image - image).mean() < blur_error / 10


def test_each_octave_carries_its_detail_up_to_the_next(engine: DreamEngine, coffee: Path) -> None:
    image = picture(coffee, 128)
    first, last = octaves_of(dream(engine, image, octaves=2, steps_per_octave=5, octave_scale=2.0))
    height, width = first.image.shape[:2]
    small = np.asarray(imaging.to_pil(image).resize((width, height), Image.Resampling.BICUBIC))
    detail = first.image - small / 255.0
    carried = (
        np.asarray(imaging.to_pil(np.clip(detail + 0.5, 0, 1)).resize(image.shape[1::-1], Image.Resampling.BICUBIC))
        / 255.0
        - 0.5
    )
    change = last.image - image
    assert np.corrcoef(carried.ravel(), change.ravel())[0, 1] > 0.5


def test_the_device_bound_path_dreams_exactly_like_numpy_feeding(repository, coffee: Path) -> None:
    # On CUDA the engine keeps the picture in OrtValues via IOBinding; here the same
    # code runs on CPU OrtValues and must match plain numpy feeding bit for bit.
    image = picture(coffee)
    spec = DreamSpec(pixels=image, octaves=2, steps_per_octave=3, seed=5)
    results = []
    for keep_on_device in (False, True):
        engine = DreamEngine(repository, keep_on_device=keep_on_device)
        results.append(octaves_of(list(engine.run(engine.plan(spec)))))
    for host, bound in zip(*results, strict=True):
        np.testing.assert_array_equal(host.image, bound.image)


def test_a_set_cancel_flag_stops_the_dream_before_the_next_step(engine: DreamEngine, coffee: Path) -> None:
    cancel = threading.Event()
    plan = engine.plan(DreamSpec(pixels=picture(coffee), octaves=1, steps_per_octave=100))
    before = engine.steps_run
    events = engine.run(plan, cancel)
    next(events)
    next(events)
    cancel.set()
    with pytest.raises(DreamCancelled):
        next(events)
    assert engine.steps_run - before == 2


def test_the_step_graph_is_the_deepest_weighted_layers_and_its_session_is_reused(
    engine: DreamEngine, coffee: Path
) -> None:
    image = picture(coffee)
    plan = engine.plan(DreamSpec(pixels=image, layers={"block2": 1.0, "block5": 0.5, "block9": 0.0}))
    assert plan.step_graph == plan.model.manifest.layer("block5").step_graph  # covers block2 too
    names = [layer.name for layer in plan.model.manifest.layers]
    weights = dict(zip(names, plan.layer_weights, strict=True))
    assert weights["block2"] == 1.0 and weights["block5"] == 0.5
    assert sum(weights.values()) == 1.5
    assert plan.channel_weights.shape == (plan.model.manifest.channel_total,)

    list(engine.run(plan))
    opened = plan.model.session_count
    session = plan.model.session(plan.step_graph)
    list(engine.run(plan))
    assert plan.model.session_count == opened
    assert plan.model.session(plan.step_graph) is session


def test_a_dream_on_one_layer_runs_its_focused_step_graph(engine: DreamEngine, coffee: Path) -> None:
    plan = engine.plan(DreamSpec(pixels=picture(coffee), layers={"block9": 1.0}))
    assert plan.step_graph == plan.model.manifest.layer("block9").focus_step_graph


def test_the_default_layers_come_from_the_manifest(engine: DreamEngine, coffee: Path) -> None:
    plan = engine.plan(DreamSpec(pixels=picture(coffee)))
    manifest = plan.model.manifest
    assert plan.step_graph == plan.model.step_graph_for(manifest.default_layers)
    for name, weight in manifest.default_layers.items():
        assert plan.layer_weights[manifest.layer_index(name)] == weight


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"layers": {"no_such_layer": 1.0}}, "its layers are stem, block0"),
        ({"layers": {"block3": 0.0}}, "non-zero weight"),
        ({"layers": {"block3": float("nan")}}, "finite"),
        ({"octaves": 0}, "octaves 0 is out of range"),
        ({"octaves": 13}, "octaves 13 is out of range"),
        ({"steps_per_octave": 1001}, "steps per octave 1001 is out of range"),
        ({"octave_scale": 0.5}, "octave_scale 0.5 is out of range"),
        ({"step_size": -0.1}, "step_size -0.1 is out of range"),
        ({"jitter": -1}, "jitter -1 is out of range"),
    ],
)
def test_bad_parameters_are_refused_with_what_to_change(
    engine: DreamEngine, coffee: Path, params: dict, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        engine.plan(DreamSpec(pixels=picture(coffee), model=DEFAULT_MODEL, **params))


def test_a_picture_above_the_largest_tiled_side_is_refused(engine: DreamEngine) -> None:
    with pytest.raises(InvalidRequest, match="too many pixels.*lower max_size"):
        engine.plan(DreamSpec(noise_size=(64, 9000)))


def test_an_unknown_model_is_refused_with_the_known_ones(engine: DreamEngine) -> None:
    with pytest.raises(UnknownModel, match=f"unknown model 'nope': this server has .*{DEFAULT_MODEL}"):
        engine.plan(DreamSpec(model="nope", noise_size=(64, 64)))


def test_a_lone_dream_runs_on_every_cpu_and_dreams_at_once_share_them(
    lite0_dir: Path, coffee: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dreamstream.server.models import ModelRepository
    from dreamstream.server.providers import CpuShare

    repository = ModelRepository(lite0_dir.parent, device="cpu", threads=CpuShare(2))
    repository.load()
    engine = DreamEngine(repository)
    plan = engine.plan(DreamSpec(pixels=picture(coffee), octaves=2, steps_per_octave=2))
    model = plan.model

    first = engine.run(plan)
    next(first)  # the first dream is inside its first octave now, alone: on both CPUs
    assert repository.cpu.running == 1
    assert model.session(plan.step_graph).get_session_options().intra_op_num_threads == 2
    with caplog.at_level("INFO", logger="dreamstream.server.models"):
        second = list(engine.run(plan))  # a second dream while the first runs: one CPU each
    assert f"opened {plan.step_graph} on 1 thread(s)" in caplog.text
    assert octaves_of(second)[-1].final
    with repository.cpu.dreaming():  # as if a dream were running: the one-thread session
        assert model.session(plan.step_graph).get_session_options().intra_op_num_threads == 1
    assert octaves_of(list(first))[-1].final  # the first dream ends too, and leaves the share
    assert repository.cpu.running == 0


def test_a_cancelled_dream_leaves_the_share_of_the_cpus(engine: DreamEngine, coffee: Path) -> None:
    cancel = threading.Event()
    events = engine.run(engine.plan(DreamSpec(pixels=picture(coffee), octaves=2, steps_per_octave=3)), cancel)
    next(events)
    assert engine.models.cpu.running == 1
    cancel.set()
    with pytest.raises(DreamCancelled):
        list(events)
    assert engine.models.cpu.running == 0
