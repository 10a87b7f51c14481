"""Model folders are trusted no further than they prove: confined paths, weights checked, bad ones refused alone."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dreamstream.cli import main
from dreamstream.client import DreamClient, Frame, ModelUnavailable
from dreamstream.modeldir import MANIFEST_FILE
from dreamstream.server.app import model_health_name
from dreamstream.server.models import ModelRepository, RepositoryError
from dreamstream.v1 import dream_pb2, dream_pb2_grpc


def copy_model(source: Path, root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(source, target)
    return target


def edit_manifest(folder: Path, edit) -> None:
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def point_first_graph_at(target: str):
    def edit(manifest: dict) -> None:
        manifest["layers"][0]["step_graph"] = target

    return edit


@pytest.fixture(scope="module")
def mixed_models(lite0_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One good model beside five broken ones."""
    root = tmp_path_factory.mktemp("mixed")
    good = copy_model(lite0_dir, root, "good")
    graph = json.loads((good / MANIFEST_FILE).read_text())["layers"][0]["step_graph"]
    edit_manifest(copy_model(lite0_dir, root, "escapes"), point_first_graph_at(f"../good/{graph}"))
    edit_manifest(copy_model(lite0_dir, root, "absolute"), point_first_graph_at(str(good / graph)))
    flipped = copy_model(lite0_dir, root, "flipped")
    weights = flipped / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    truncated = copy_model(lite0_dir, root, "truncated")
    with (truncated / "weights.bin").open("r+b") as file:
        file.truncate(1000)
    (copy_model(lite0_dir, root, "garbled") / MANIFEST_FILE).write_text("{not json")
    return root


REFUSED = {
    "escapes": "lies outside the model folder",
    "absolute": "lies outside the model folder",
    "flipped": "does not match the manifest's weights_sha256",
    "truncated": "truncated or altered",
    "garbled": "malformed manifest",
}


def test_broken_model_folders_are_refused_with_one_log_line_each_and_the_good_one_serves(
    mixed_models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repository = ModelRepository(mixed_models, device="cpu")
    with caplog.at_level(logging.ERROR, logger="dreamstream.server.models"):
        repository.load()
    assert repository.names() == ["efficientnet-lite0"]
    assert repository.get("").directory.name == "good"
    assert set(repository.refused) == set(REFUSED)
    for name, problem in REFUSED.items():
        assert problem in repository.refused[name]
        lines = [record.getMessage() for record in caplog.records if f"/{name} refused" in record.getMessage()]
        assert len(lines) == 1 and "\n" not in lines[0] and problem in lines[0], lines


def test_listmodels_health_and_the_cli_say_which_models_serve(start_server, mixed_models: Path, capsys) -> None:
    server = start_server(ModelRepository(mixed_models, device="cpu"))
    with grpc.insecure_channel(server.target) as channel:
        listing = dream_pb2_grpc.DreamServiceStub(channel).ListModels(dream_pb2.ListModelsRequest(), timeout=10)
        assert [model.name for model in listing.models] == ["efficientnet-lite0"]
        unavailable = {model.name: model.problem for model in listing.unavailable_models}
        assert set(unavailable) == set(REFUSED)
        assert "weights_sha256" in unavailable["flipped"]
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

        assert status(model_health_name("efficientnet-lite0")) == health_pb2.HealthCheckResponse.SERVING
        assert status(model_health_name("flipped")) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert main(["models", "--server", server.target]) == 0
    printed = capsys.readouterr().out
    assert "efficientnet-lite0 (default)" in printed
    assert re.search(r"^flipped: not served \(.*weights_sha256", printed, re.MULTILINE)
    with DreamClient(server.target) as client:
        assert {model.name for model in client.model_listing().unavailable} == set(REFUSED)
        events = list(client.dream(None, width=64, height=48, octaves=1, steps_per_octave=1))
        assert isinstance(events[-1], Frame) and events[-1].final
        with pytest.raises(ModelUnavailable, match="model 'escapes' is not served: graph .* outside"):
            list(client.dream(None, model="escapes", width=64, height=48))


def test_a_folder_where_no_model_loads_is_one_clear_error(lite0_dir: Path, tmp_path: Path) -> None:
    edit_manifest(copy_model(lite0_dir, tmp_path, "only"), point_first_graph_at("/etc/passwd"))
    with pytest.raises(RepositoryError, match=r"no model in .* can be served \(only: graph '/etc/passwd' lies outside"):
        ModelRepository(tmp_path, device="cpu").load()
