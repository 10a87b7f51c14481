"""Reading weight files into numpy arrays without executing code from them.

One reader per format, each written for this project: `torch_files` (torch
state dicts, zip and legacy, through an unpickler that knows only what a state
dict needs), `npz` (`allow_pickle=False`) and `caffemodel` (the protobuf wire
format decoded by hand). `read_weights` recognises the format from a file's
content.

Every failure is a `WeightsError` whose message names the file and what is
wrong with it; `require` gives the recipes the same for a missing or
mis-shaped weight.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from dreamstream.export.weights.caffemodel import read_caffemodel
from dreamstream.export.weights.errors import WeightsError, require
from dreamstream.export.weights.npz import read_npz
from dreamstream.export.weights.torch_files import (
    load_torch_checkpoint,
    read_torch_state_dict,
    state_dict_from_checkpoint,
)

__all__ = [
    "WeightsError",
    "load_torch_checkpoint",
    "read_caffemodel",
    "read_npz",
    "read_torch_state_dict",
    "read_weights",
    "require",
    "sha256_of",
    "state_dict_from_checkpoint",
]


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Read any supported weight file, recognising its format from its content.

    torch zip archives and `.npz` files are both zip files: an archive holding
    `<name>/data.pkl` is torch's, one holding `.npy` members is numpy's. A file
    starting with a pickle is a legacy torch file; anything else is read as a
    caffemodel.
    """
    path = Path(path)
    head = _read_head(path, 2)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any(n.endswith("/data.pkl") for n in names):
            return read_torch_state_dict(path)
        if names and all(n.endswith(".npy") for n in names):
            return read_npz(path)
        raise WeightsError(f"{path}: a zip archive that is neither a torch file nor an .npz")
    if head[:1] == b"\x80":
        return read_torch_state_dict(path)
    return read_caffemodel(path)


def _read_head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read weight file: {e.strerror or e}") from None
