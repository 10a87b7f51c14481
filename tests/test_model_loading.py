"""Model folders are trusted no further than they prove: confined paths, weights checked, bad ones refused alone."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import grpc
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dreamstream.cli import main
from dreamstream.client import DreamClient, Frame, ModelUnavailable
from dreamstream.modeldir import MANIFEST_FILE, read_manifest
from dreamstream.server.app import model_health_name
from dreamstream.server.model_files import ModelFileError, check_model_files
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


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def rehash(folder: Path, relative: str) -> None:
    """The manifest's sha256 of `relative` made to match the file again (an altered file with its hash)."""
    digest = hashlib.sha256((folder / relative).read_bytes()).hexdigest()
    edit_manifest(folder, lambda manifest: manifest["files_sha256"].__setitem__(relative, digest))


def read_external_data_from(folder: Path, relative: str, location: str) -> None:
    """Rewrite graph `relative` so that its first external tensor reads from `location`, hash updated."""
    graph = onnx.load(str(folder / relative), load_external_data=False)
    tensor = next(t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(graph, str(folder / relative))
    rehash(folder, relative)


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
    manifest = read_manifest(lite0_dir)
    flip_a_byte(copy_model(lite0_dir, root, "graph-flipped") / manifest.layers[-1].guide_graph)
    flip_a_byte(copy_model(lite0_dir, root, "labels-altered") / manifest.classifier.labels)
    strays = copy_model(lite0_dir, root, "stray-data")
    shutil.copy(strays / "weights.bin", strays / "other.bin")
    read_external_data_from(strays, manifest.layers[0].graph, "other.bin")
    outside = copy_model(lite0_dir, root, "outside-data")
    read_external_data_from(outside, manifest.classifier.graph, "../good/weights.bin")
    return root


REFUSED = {
    "escapes": "lies outside the model folder",
    "absolute": "lies outside the model folder",
    "flipped": "does not match the manifest's weights_sha256",
    "truncated": "truncated or altered",
    "garbled": "malformed manifest",
    "graph-flipped": "does not match its sha256 in the manifest",
    "labels-altered": "labels file labels.txt does not match its sha256",
    "stray-data": "reads external data from 'other.bin', not the manifest's weights file",
    "outside-data": "classifier graph classifier.onnx reads external data from '../good/weights.bin'",
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


def test_a_flipped_byte_in_any_served_file_is_named_and_refused(lite0_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(lite0_dir, tmp_path, "model")
    manifest = read_manifest(folder)
    check_model_files(folder, manifest)
    served = manifest.served_files()
    assert len(served) == len(manifest.files_sha256) > 5 * len({layer.group for layer in manifest.layers})
    for relative in served:
        original = (folder / relative).read_bytes()
        flip_a_byte(folder / relative)
        with pytest.raises(ModelFileError, match=rf"{re.escape(relative)} does not match"):
            check_model_files(folder, manifest)
        (folder / relative).write_bytes(original)


def test_a_manifest_older_than_the_file_hashes_still_loads_its_weights_checked_with_one_warning(
    lite0_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = copy_model(lite0_dir, tmp_path, "older")
    edit_manifest(folder, lambda manifest: manifest.pop("files_sha256"))
    with caplog.at_level(logging.WARNING, logger="dreamstream.server.model_files"):
        ModelRepository(tmp_path, device="cpu").load()
    warnings = [record.getMessage() for record in caplog.records if "no files_sha256" in record.getMessage()]
    assert len(warnings) == 1 and "re-export" in warnings[0]
    flip_a_byte(folder / "weights.bin")
    with pytest.raises(RepositoryError, match="weights_sha256"):
        ModelRepository(tmp_path, device="cpu").load()


def test_the_external_data_reader_knows_onnx_field_numbers_and_finds_tensors_in_attributes_and_subgraphs(
    lite0_dir: Path,
) -> None:
    from onnx import helper

    from dreamstream.server import onnx_external

    for message, fields in onnx_external._MESSAGES:
        descriptor = getattr(onnx, message).DESCRIPTOR
        assert {name: descriptor.fields_by_name[name].number for name, *_ in fields} == {
            name: number for name, number, *_ in fields
        }, message
    graph = read_manifest(lite0_dir).layers[0].graph
    assert onnx_external.external_locations((lite0_dir / graph).read_bytes()) == {"weights.bin"}

    def external(name: str, location: str) -> onnx.TensorProto:
        tensor = helper.make_tensor(name, onnx.TensorProto.FLOAT, [1], b"\0\0\0\0", raw=True)
        onnx.external_data_helper.set_external_data(tensor, location)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        return tensor

    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=external("deep", "/etc/shadow"))],
        "branch",
        [],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    outer = helper.make_graph(
        [node, helper.make_node("Constant", [], ["z"], value=external("const", "../x.bin"))],
        "outer",
        [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(outer)
    assert onnx_external.external_locations(model.SerializeToString()) == {"/etc/shadow", "../x.bin"}
    with pytest.raises(onnx_external.GraphFileError, match="not an ONNX model"):
        onnx_external.external_locations(b"\xff\xff\xff")
