"""A model folder's files, trusted no further than they prove.

Every file the manifest names (`Manifest.served_files`: graphs, weights, classifier
graph, labels) must lie inside the folder and match its sha256 in the manifest's
`files_sha256`, and every graph may read external data from the manifest's weights
file only, never from another file it names. A folder that fails raises
ModelFileError, saying what to do; the repository refuses that model alone.

A manifest written before `files_sha256` still loads, its weights checked against
`weights_sha256` as then, with one warning line that its graphs and labels are not
checked: re-exporting the model adds their hashes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from dreamstream.modeldir import Manifest
from dreamstream.server.onnx_external import GraphFileError, external_data

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20


class ModelFileError(ValueError):
    """A model folder whose files cannot be trusted: outside the folder, missing, or altered."""


def model_file(directory: Path, relative: str, what: str) -> Path:
    """`relative` inside `directory`; refuses absolute paths and anything that resolves outside."""
    root = directory.resolve()
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root):
        raise ModelFileError(f"{what} {relative!r} lies outside the model folder: re-export the model")
    if not path.is_file():
        raise ModelFileError(f"{what} {relative} is missing: re-export the model")
    return path


def check_model_files(directory: Path, manifest: Manifest) -> dict[str, int]:
    """Every served file inside the folder, matching its sha256; graphs reading only the weights file.
    Returns the bytes of weights each graph reads (what its session will hold)."""
    graphs = set(manifest.served_files()) - {manifest.weights_file}
    if manifest.classifier is not None:
        graphs.discard(manifest.classifier.labels)
    served = manifest.served_files()
    paths = {relative: model_file(directory, relative, _what(manifest, relative)) for relative in served}
    hashes = manifest.files_sha256
    if not hashes:
        log.warning(
            "model folder %s: its manifest has no files_sha256 (exported before it): only its weights are "
            "checked, not its graphs or labels; re-export the model to check them",
            directory,
        )
    weights_size = _check_weights(manifest, paths[manifest.weights_file])
    graph_weights = {}
    for relative in served:
        if relative == manifest.weights_file:
            continue
        data = paths[relative].read_bytes()  # graphs and labels are small: the parameters are in the weights
        if hashes:
            _check_digest(manifest, relative, hashlib.sha256(data).hexdigest(), len(data))
        if relative in graphs:
            lengths = _check_external_data(manifest, relative, data)
            graph_weights[relative] = sum(weights_size if length is None else length for length in lengths)
    return graph_weights


def _what(manifest: Manifest, relative: str) -> str:
    if relative == manifest.weights_file:
        return "weights file"
    if manifest.classifier is not None and relative == manifest.classifier.graph:
        return "classifier graph"
    if manifest.classifier is not None and relative == manifest.classifier.labels:
        return "labels file"
    return "graph"


def _check_weights(manifest: Manifest, path: Path) -> int:
    """The weights file's size, once it matches its sha256."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    size = path.stat().st_size
    if digest.hexdigest() != manifest.weights_sha256.lower():
        raise ModelFileError(
            f"{manifest.weights_file} does not match the manifest's weights_sha256 "
            f"({size:,} bytes; truncated or altered?): re-export the model"
        )
    if manifest.files_sha256:
        _check_digest(manifest, manifest.weights_file, digest.hexdigest(), size)
    return size


def _check_digest(manifest: Manifest, relative: str, digest: str, size: int) -> None:
    expected = manifest.files_sha256.get(relative)
    if expected is None:
        raise ModelFileError(
            f"{_what(manifest, relative)} {relative} has no sha256 in the manifest's files_sha256: re-export the model"
        )
    if digest != expected.lower():
        raise ModelFileError(
            f"{_what(manifest, relative)} {relative} does not match its sha256 in the manifest "
            f"({size:,} bytes; truncated or altered?): re-export the model"
        )


def _check_external_data(manifest: Manifest, relative: str, data: bytes) -> list[int | None]:
    """The graph's external data may come from the manifest's weights file only; the lengths it reads."""
    what = _what(manifest, relative)
    try:
        found = external_data(data)
    except GraphFileError as error:
        raise ModelFileError(f"{what} {relative} is {error}: re-export the model") from error
    # Locations are relative to the graph's own folder, as ONNX Runtime resolves them.
    base = os.path.dirname(relative)
    allowed = os.path.normpath(manifest.weights_file)
    locations = {location for location, _ in found}
    strays = sorted(
        location for location in locations if not location or os.path.normpath(os.path.join(base, location)) != allowed
    )
    if strays:
        raise ModelFileError(
            f"{what} {relative} reads external data from {', '.join(map(repr, strays))}, not the manifest's "
            f"weights file {manifest.weights_file!r}: re-export the model"
        )
    return [length for _, length in found]
