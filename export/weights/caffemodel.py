"""Caffe `.caffemodel` files, decoded from the protobuf wire format by hand.

No caffe and no compiled caffe.proto: the few messages a weight file needs are
walked field by field, both the current `layer` messages and the legacy V1 `layers`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dreamstream.export.weights.errors import WeightsError

# NetParameter: layers (V1LayerParameter) = 2, layer (LayerParameter) = 100.
# LayerParameter: name = 1, type = 2 (string), blobs = 7.
# V1LayerParameter: name = 4, type = 5 (enum), blobs = 6.
# BlobProto: num = 1, channels = 2, height = 3, width = 4, data = 5 (float),
#   shape = 7 (BlobShape: dim = 1, int64), double_data = 8.
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def read_caffemodel(path: str | Path) -> dict[str, np.ndarray]:
    """Read the weights of a Caffe `.caffemodel` (a binary NetParameter).

    Returns `<layer>/weight` and `<layer>/bias` (and `<layer>/blob2`, ... for
    layers with more blobs) as float32. Convolution weights keep Caffe's
    (out, in, kh, kw); an InnerProduct weight becomes (out, in, 1, 1), the
    1x1 convolution it is equivalent to; biases are 1-D. Layers without blobs
    are skipped.
    """
    path = Path(path)
    source = str(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as e:
        raise WeightsError(f"{source}: cannot read weight file: {e.strerror or e}") from None
    weights: dict[str, np.ndarray] = {}
    try:
        for field, wire, value in _fields(data):
            if field not in (2, 100):
                continue
            _expect_wire(field, wire, _BYTES, "NetParameter")
            name, kind, blobs = _parse_layer(value, legacy=field == 2)
            if not blobs:
                continue
            if not name:
                raise WeightsError("a layer with blobs has no name")
            if f"{name}/weight" in weights:
                raise WeightsError(f"layer {name} appears twice")
            for i, blob in enumerate(blobs):
                weights[f"{name}/{_blob_name(i)}"] = _shape_blob(blob, kind, i, name)
    except WeightsError as e:
        raise WeightsError(f"{source}: {e}") from None
    if not weights:
        raise WeightsError(f"{source}: no layers with weights (is this a .caffemodel?)")
    return weights


def _blob_name(i: int) -> str:
    return ("weight", "bias")[i] if i < 2 else f"blob{i}"


def _shape_blob(blob: np.ndarray, kind: str, index: int, layer: str) -> np.ndarray:
    if index == 1 and kind in ("Convolution", "Deconvolution", "InnerProduct"):
        return blob.reshape(-1)
    if index == 0 and kind == "InnerProduct":
        # (out, in), or legacy (1, 1, out, in)
        if blob.ndim < 2 or int(np.prod(blob.shape[:-2], dtype=np.int64)) != 1:
            raise WeightsError(f"layer {layer}: an InnerProduct weight of shape {blob.shape}")
        return blob.reshape(blob.shape[-2], blob.shape[-1], 1, 1)
    return blob


def _parse_layer(buf: memoryview, legacy: bool) -> tuple[str, str, list[np.ndarray]]:
    name_field, type_field, blobs_field = (4, 5, 6) if legacy else (1, 2, 7)
    name, kind = "", ""
    blobs: list[np.ndarray] = []
    for field, wire, value in _fields(buf):
        if field == name_field:
            _expect_wire(field, wire, _BYTES, "layer")
            name = bytes(value).decode("utf-8", "replace")
        elif field == type_field:
            if legacy:
                _expect_wire(field, wire, _VARINT, "V1 layer")
                kind = _V1_TYPES.get(value, f"V1:{value}")
            else:
                _expect_wire(field, wire, _BYTES, "layer")
                kind = bytes(value).decode("utf-8", "replace")
        elif field == blobs_field:
            _expect_wire(field, wire, _BYTES, "layer")
            blobs.append(_parse_blob(value, name or "?"))
    return name, kind, blobs


def _parse_blob(buf: memoryview, layer: str) -> np.ndarray:
    legacy_dims: dict[int, int] = {}
    shape: list[int] | None = None
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for field, wire, value in _fields(buf):
        if field in (1, 2, 3, 4):
            _expect_wire(field, wire, _VARINT, "BlobProto")
            legacy_dims[field] = _signed32(value)
        elif field == 5:
            floats.append(_packed_or_single(value, wire, "<f4", _FIXED32))
        elif field == 8:
            doubles.append(_packed_or_single(value, wire, "<f8", _FIXED64))
        elif field == 7:
            _expect_wire(field, wire, _BYTES, "BlobProto")
            shape = _parse_shape(value)
    parts = floats if floats else doubles
    data = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, dtype=np.float32)
    if shape is None:
        if legacy_dims:
            shape = [legacy_dims.get(f, 1) for f in (1, 2, 3, 4)]
        else:
            shape = [data.size]
    count = int(np.prod(shape, dtype=np.int64))
    if count != data.size:
        raise WeightsError(f"layer {layer}: a blob of shape {tuple(shape)} holds {data.size} values, not {count}")
    return data.reshape(shape)


def _parse_shape(buf: memoryview) -> list[int]:
    dims: list[int] = []
    for field, wire, value in _fields(buf):
        if field != 1:
            continue
        if wire == _VARINT:
            dims.append(value)
        elif wire == _BYTES:
            pos = 0
            while pos < len(value):
                dim, pos = _varint(value, pos)
                dims.append(dim)
        else:
            raise WeightsError(f"BlobShape.dim has wire type {wire}")
    return dims


def _packed_or_single(value: Any, wire: int, dtype: str, single_wire: int) -> np.ndarray:
    if wire == _BYTES or wire == single_wire:
        size = np.dtype(dtype).itemsize
        if len(value) % size:
            raise WeightsError(f"packed data of {len(value)} bytes is not a whole number of values")
        return np.frombuffer(value, dtype=dtype)
    raise WeightsError(f"blob data has wire type {wire}")


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _expect_wire(field: int, wire: int, expected: int, message: str) -> None:
    if wire != expected:
        raise WeightsError(
            f"{message} field {field} has wire type {wire}, expected {expected} "
            "(not a caffemodel of the expected layout)"
        )


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise WeightsError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WeightsError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) for each field of one message.

    A varint's value is an int; every other value is a memoryview of its bytes.
    """
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WeightsError("field number 0 (not a protobuf message)")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            value, pos = buf[pos : pos + size], pos + size
        elif wire == _BYTES:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        else:
            raise WeightsError(f"unsupported protobuf wire type {wire} (field {field})")
        if pos > end:
            raise WeightsError(f"truncated field {field}")
        yield field, wire, value
