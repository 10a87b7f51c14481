"""Finding what to dream on: Classify (the network's own classes) and the layer sweep.

Real servers on loopback with the real efficientnet-lite0 and googlenet-bvlc, the
real clients and CLI, and the cat photograph.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import shared_image, wait_until_still
from PIL import Image

from dreamstream.cli import main
from dreamstream.client import AsyncDreamClient, DreamClient, InvalidRequest, ModelUnavailable, Progress, ServerBusy
from dreamstream.client.contact_sheet import LABEL_HEIGHT, MARGIN, contact_sheet
from dreamstream.modeldir import MANIFEST_FILE, read_manifest
from dreamstream.server.engine.classify import classify
from dreamstream.server.refusals import NoClassifier

CAT = "Egyptian cat"
SWEEP = ["--max-size", "96", "--octaves", "1", "--steps", "2", "--seed", "3", "-q"]


@pytest.fixture(scope="session")
def chelsea() -> Path:
    return shared_image("chelsea.png")


def test_export_ships_the_classifier_head_and_the_1000_imagenet_labels(lite0_dir: Path) -> None:
    classifier = read_manifest(lite0_dir).classifier
    assert classifier is not None and classifier.size == 224
    labels = (lite0_dir / classifier.labels).read_text().splitlines()
    assert len(labels) == 1000 and labels[285] == CAT
    graph = onnx.load(str(lite0_dir / classifier.graph), load_external_data=False)
    assert [value.name for value in graph.graph.input] == ["image"]
    assert [value.name for value in graph.graph.output] == ["probabilities"]


def test_efficientnet_lite0_sees_an_egyptian_cat(client: DreamClient, chelsea: Path) -> None:
    classes = client.classify(chelsea, model="efficientnet-lite0")
    assert len(classes) == 5
    assert CAT in [cls.label for cls in classes]
    probabilities = [cls.probability for cls in classes]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0 + 1e-6
    assert {cls.index for cls in classes if cls.label == CAT} == {285}


def test_googlenet_bvlc_sees_an_egyptian_cat(bvlc_server, chelsea: Path) -> None:
    with DreamClient(bvlc_server.target) as client:
        classes = client.classify(chelsea, model="googlenet-bvlc", top=3)
    assert len(classes) == 3
    assert CAT in [cls.label for cls in classes]


def test_the_async_client_classifies_alike(server, client: DreamClient, chelsea: Path) -> None:
    async def classify_async() -> list:
        async with AsyncDreamClient(server.target) as async_client:
            return await async_client.classify(chelsea, top=2)

    assert asyncio.run(classify_async()) == client.classify(chelsea, top=2)


def test_models_say_which_can_classify(client: DreamClient) -> None:
    (lite0,) = [model for model in client.models() if model.name == "efficientnet-lite0"]
    assert lite0.can_classify


def test_a_top_out_of_range_and_a_missing_picture_are_refused(client: DreamClient, chelsea: Path) -> None:
    with pytest.raises(InvalidRequest, match="top 1001 is out of range: use 1 to 1000") as refused:
        client.classify(chelsea, top=1001)
    assert refused.value.field_violations[0].field == "top"
    with pytest.raises(InvalidRequest, match="cannot decode"):
        client.classify(b"not a picture")


def test_a_model_without_a_classifier_head_is_refused_naming_those_with_one(
    lite0_dir: Path, tmp_path: Path, chelsea: Path, start_server
) -> None:
    from conftest import loaded_repository

    copied_model(lite0_dir, tmp_path / "models", "headless", classifier=None)
    (tmp_path / "models" / lite0_dir.name).symlink_to(lite0_dir)
    repository = loaded_repository(tmp_path / "models")
    with pytest.raises(NoClassifier, match="has no classifier.*these can: efficientnet-lite0"):
        classify(repository, chelsea.read_bytes(), "headless")
    with DreamClient(start_server(repository).target) as client:
        with pytest.raises(ModelUnavailable) as refused:
            client.classify(chelsea, model="headless")
        assert refused.value.reason == "NO_CLASSIFIER"
        assert [model.can_classify for model in client.models()] == [True, False]


def test_a_classifier_graph_outside_its_model_folder_is_refused_at_load(lite0_dir: Path, tmp_path: Path) -> None:
    from dreamstream.server.models import ModelRepository

    classifier = {**asdict(read_manifest(lite0_dir).classifier), "graph": "../elsewhere.onnx"}
    copied_model(lite0_dir, tmp_path / "models", "escapes", classifier=classifier)
    (tmp_path / "models" / lite0_dir.name).symlink_to(lite0_dir)
    repository = ModelRepository(tmp_path / "models", device="cpu")
    repository.load()
    assert "classifier graph '../elsewhere.onnx' lies outside the model folder" in repository.refused["escapes"]


def copied_model(source: Path, root: Path, name: str, **manifest_changes) -> Path:
    """A copy of the model folder `source` (the server refuses graphs behind links) with its manifest changed."""
    folder = root / name
    shutil.copytree(source, folder)
    raw = json.loads((source / MANIFEST_FILE).read_text())
    raw.update(name=name, **manifest_changes)
    (folder / MANIFEST_FILE).write_text(json.dumps(raw))
    return folder


def test_the_classify_command_prints_the_classes_most_probable_first(server, chelsea: Path, capsys) -> None:
    assert main(["classify", str(chelsea), "--server", server.target, "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert any(line.endswith(CAT) for line in lines)
    assert all(line.strip().split("%")[0].replace(".", "").isdigit() for line in lines)


def test_a_sweep_over_three_layers_writes_a_dream_per_layer_and_a_contact_sheet(
    server, chelsea: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    layers = ["block2", "block6", "block10"]
    assert main(["sweep", str(chelsea), "-o", str(out), "--layers", ",".join(layers), "--server", server.target,
                 *SWEEP]) == 0  # fmt: skip
    pngs = sorted(path.name for path in out.glob("*.png"))
    assert len(pngs) >= 4
    for layer in layers:
        (name,) = [png for png in pngs if f"_{layer}_" in png]
        assert name == f"chelsea_efficientnet-lite0_{layer}_o1x2_s0.01_j32_seed3.png"
    dreams = [np.asarray(Image.open(out / png), np.float32) for png in pngs if png != "contact-sheet.png"]
    assert all(np.abs(first - second).mean() > 1.0 for first, second in zip(dreams, dreams[1:], strict=False))
    sheet = Image.open(out / "contact-sheet.png")
    assert sheet.width > 2 * 96 and sheet.height > 2 * 64  # the original and three dreams: two by two


def test_a_sweep_without_layers_dreams_every_layer_of_the_model(client: DreamClient, tmp_path: Path) -> None:
    picture = tmp_path / "small.png"
    Image.open(shared_image("coffee.png")).resize((48, 40)).save(picture)
    out = tmp_path / "sweep"
    assert main(["sweep", str(picture), "-o", str(out), "--server", client.target, "--max-size", "48",
                 "--octaves", "1", "--steps", "1", "-q"]) == 0  # fmt: skip
    (lite0,) = [model for model in client.models() if model.name == "efficientnet-lite0"]
    assert len(list(out.glob("small_*.png"))) == len(lite0.layers)


def test_the_contact_sheet_puts_each_picture_over_its_label_on_an_even_grid() -> None:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    pictures = [
        (f"layer {n}" + "x" * 40 * (n == 4), Image.new("RGB", (80, 40), colour)) for n, colour in enumerate(colours)
    ]
    sheet = np.asarray(contact_sheet(pictures, tile=60))
    cell_width, cell_height = 60 + MARGIN, 30 + LABEL_HEIGHT + MARGIN
    assert sheet.shape[:2] == (2 * cell_height + MARGIN, 3 * cell_width + MARGIN)  # three columns, two rows
    for number, colour in enumerate(colours):
        left, top = MARGIN + (number % 3) * cell_width, MARGIN + (number // 3) * cell_height
        assert tuple(sheet[top + 15, left + 30]) == colour
        label = sheet[top + 30 + 2 : top + 30 + LABEL_HEIGHT, left : left + 60]
        assert (label < 128).any()  # the label is written under its picture
    with pytest.raises(ValueError, match="at least one picture"):
        contact_sheet([])


def test_a_classification_waits_in_the_dreams_line_so_a_burst_cannot_outgrow_the_server(
    start_server, repository, chelsea: Path
) -> None:
    # Decoding a picture costs memory before the network runs: a Classify takes a slot
    # of the same bounded admission as the dreams, so with the only slot dreaming and no
    # room to wait, it is refused instead of decoding beside the dream.
    tight = start_server(repository, max_concurrent=1, max_queue=0)
    with DreamClient(tight.target) as dreamer, DreamClient(tight.target) as classifier:
        running = dreamer.dream(chelsea, max_size=64, octaves=1, steps_per_octave=1000)
        assert isinstance(next(event for event in running if isinstance(event, Progress)), Progress)
        with pytest.raises(ServerBusy, match="busy"):
            classifier.classify(chelsea)
        running.close()
        wait_until_still(lambda: tight.server.engine.steps_run)
        assert classifier.classify(chelsea, top=1)[0].label == CAT
