"""Reading weight files into numpy arrays without executing code from them.

Three formats, each read by a small reader written for this project:

- torch state dicts (`.pth`, `.pt`), both the zip archive torch has written
  since 1.6 and the older "legacy" stream of pickles. A torch file is a
  pickle, and unpickling an arbitrary pickle runs arbitrary code, so the
  pickle is read by an unpickler that knows only the handful of globals a
  state dict needs (an OrderedDict, the tensor rebuild functions, the storage
  classes, dtypes), each mapped to a function of ours that builds numpy
  arrays. Any other global is refused before it is imported. torch itself is
  never imported: the export path does not depend on it.
- `.npz` archives of named arrays, read with `allow_pickle=False`.
- Caffe `.caffemodel` files, decoded from the protobuf wire format by hand
  (no caffe, no compiled caffe.proto), both the current `layer` messages and
  the legacy V1 `layers`.

Every failure is a `WeightsError` whose message names the file and what is
wrong with it; `require` gives the recipes the same for a missing or
mis-shaped weight.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


class WeightsError(ValueError):
    """A weight file cannot be read, or does not hold the weights a backbone needs."""


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require(
    weights: Mapping[str, np.ndarray],
    key: str,
    shape: Sequence[int | None],
    source: str | None = None,
) -> np.ndarray:
    """Return `weights[key]` after checking that it exists and has `shape`.

    A `None` in `shape` accepts any size on that axis. Raises `WeightsError`
    naming the missing key (with the closest keys present), or
    "layer KEY: expected shape (...), got (...)". `source`, when given (a file
    name), starts the message.
    """
    prefix = f"{source}: " if source else ""
    if key not in weights:
        close = difflib.get_close_matches(key, list(weights), n=3)
        hint = f" (closest present: {', '.join(close)})" if close else ""
        raise WeightsError(f"{prefix}missing weight {key!r}, expected shape {_format_shape(tuple(shape))}{hint}")
    array = weights[key]
    expected = tuple(shape)
    if array.ndim != len(expected) or any(
        e is not None and e != got for e, got in zip(expected, array.shape, strict=False)
    ):
        raise WeightsError(
            f"{prefix}layer {key}: expected shape {_format_shape(expected)}, got {_format_shape(array.shape)}"
        )
    return array


def _format_shape(shape: Sequence[int | None]) -> str:
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


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


# --------------------------------------------------------------------------- npz


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read an `.npz` of named arrays; object arrays (pickles) are refused."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise WeightsError(f"{path}: cannot read as .npz: {e}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise WeightsError(f"{path}: a single array, not an .npz archive of named arrays")
    with archive:
        try:
            return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise WeightsError(f"{path}: cannot read as .npz: {e}") from None


# ------------------------------------------------------------------------ torch

# The storage classes torch pickles (as `torch.<Name>Storage`), by element type.
# bfloat16 has no numpy type: its 16-bit patterns are widened to float32.
_BFLOAT16 = "bfloat16"
_STORAGE_DTYPES: dict[str, Any] = {
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "BFloat16Storage": _BFLOAT16,
    "UntypedStorage": np.dtype(np.uint8),
}
# torch dtypes, which pickle as `torch.<name>`; they may appear as plain values.
_TORCH_DTYPES: dict[str, Any] = {
    "float32": np.dtype(np.float32),
    "float": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "half": np.dtype(np.float16),
    "float64": np.dtype(np.float64),
    "double": np.dtype(np.float64),
    "int64": np.dtype(np.int64),
    "long": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
    "bfloat16": _BFLOAT16,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


@dataclass(frozen=True)
class _StorageType:
    """What `find_class` returns for `torch.FloatStorage` and friends."""

    name: str
    dtype: Any  # np.dtype, or _BFLOAT16

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype is _BFLOAT16 else self.dtype.itemsize

    def __setstate__(self, state: object) -> None:
        raise pickle.UnpicklingError("a storage type cannot be given state")


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id: its bytes are read after unpickling."""

    key: str
    type: _StorageType
    offset: int  # in elements, into the stored buffer (legacy storage views)
    numel: int

    def __setstate__(self, state: object) -> None:
        raise pickle.UnpicklingError("a storage cannot be given state")


@dataclass(frozen=True)
class _TensorRef:
    """A tensor waiting for its storage's bytes."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __setstate__(self, state: object) -> None:
        raise pickle.UnpicklingError("a tensor cannot be given state")


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("a tensor's storage is not a storage record")
    if not (
        isinstance(storage_offset, int) and _is_int_tuple(size) and _is_int_tuple(stride) and len(size) == len(stride)
    ):
        raise pickle.UnpicklingError("a tensor has a malformed offset, size or stride")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: object, requires_grad: object, backward_hooks: object) -> object:
    return data


def _rebuild_parameter_with_state(data: object, requires_grad: object, backward_hooks: object, state: object) -> object:
    return data


def _is_int_tuple(value: object) -> bool:
    return isinstance(value, tuple | list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _allowed_global(module: str, name: str) -> object | None:
    """The only globals a torch file may name, mapped to our own objects."""
    if (module, name) == ("collections", "OrderedDict"):
        return OrderedDict
    if module == "torch._utils":
        return {
            "_rebuild_tensor": _rebuild_tensor_v2,  # torch < 0.4: the first four arguments
            "_rebuild_tensor_v2": _rebuild_tensor_v2,
            "_rebuild_parameter": _rebuild_parameter,
            "_rebuild_parameter_with_state": _rebuild_parameter_with_state,
        }.get(name)
    # torch.cuda.*Storage: legacy files saved from a GPU (the location is ignored)
    if module in ("torch", "torch.cuda", "torch.storage") and name in _STORAGE_DTYPES:
        if module == "torch.storage" and name != "UntypedStorage":
            return None
        return _StorageType(name, _STORAGE_DTYPES[name])
    if module == "torch" and name in _TORCH_DTYPES:
        return _TORCH_DTYPES[name]
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only tensors, storages and plain containers.

    `persistent_ids` collects the storages the pickle names; their bytes live
    outside the pickle (zip members, or after the pickle in legacy files).
    """

    def __init__(self, file: io.BytesIO, source: str) -> None:
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _StorageType] = {}

    def find_class(self, module: str, name: str) -> object:
        found = _allowed_global(module, name)
        if found is None:
            raise WeightsError(f"{self.source}: refusing to load {module}.{name}: weight files must hold tensors only")
        return found

    def persistent_load(self, pid: object) -> _StorageRef:
        # zip: ('storage', type, key, location, numel)
        # legacy: ('storage', type, root_key, location, numel, view_metadata)
        if not (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        known = self.storages.setdefault(key, storage_type)
        if known.name != storage_type.name:
            raise pickle.UnpicklingError(f"storage {key} is named with two element types")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return _StorageRef(key, storage_type, 0, numel)
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[1], int) and isinstance(view[2], int)):
            raise pickle.UnpicklingError(f"malformed storage view {view!r:.80}")
        return _StorageRef(key, storage_type, view[1], view[2])


def _unpickle(data: io.BytesIO, source: str) -> tuple[object, _RestrictedUnpickler]:
    unpickler = _RestrictedUnpickler(data, source)
    try:
        return unpickler.load(), unpickler
    except WeightsError:
        raise
    except Exception as e:  # a malformed pickle raises many kinds of error
        reason = f"{type(e).__name__}: {e}"
        raise WeightsError(f"{source}: not a readable torch file: {reason}") from None


def load_torch_checkpoint(path: str | Path) -> object:
    """Read a torch file into plain containers holding numpy arrays.

    Dicts, lists and tuples keep their structure and every tensor becomes a
    numpy array (a copy honouring the tensor's offset, size and stride).
    Nothing in the file is executed: any global other than the few a state
    dict needs raises `WeightsError` naming it.
    """
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{source}: cannot read weight file: {e.strerror or e}") from None
    if zipfile.is_zipfile(io.BytesIO(data)):
        return _load_torch_zip(data, source)
    if data[:1] == b"\x80":
        return _load_torch_legacy(data, source)
    raise WeightsError(f"{source}: not a torch file (neither a zip archive nor a pickle)")


def _load_torch_zip(data: bytes, source: str) -> object:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise WeightsError(f"{source}: broken zip archive: {e}") from None
    with zf:
        pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise WeightsError(
                f"{source}: a torch zip archive holds exactly one <archive>/data.pkl, found {len(pickles)}"
            )
        prefix = pickles[0][: -len("data.pkl")]
        names = set(zf.namelist())
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise WeightsError(f"{source}: unknown byte order {byteorder!r}")
        obj, unpickler = _unpickle(io.BytesIO(zf.read(pickles[0])), source)
        buffers: dict[str, np.ndarray] = {}
        for key, storage_type in unpickler.storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise WeightsError(f"{source}: storage {key} is missing (no {member})")
            buffers[key] = _as_elements(zf.read(member), storage_type, byteorder, source, key)
    return _materialize(obj, buffers, source)


def _load_torch_legacy(data: bytes, source: str) -> object:
    stream = io.BytesIO(data)
    magic, _ = _unpickle(stream, source)
    if magic != _LEGACY_MAGIC:
        raise WeightsError(f"{source}: not a torch file (a pickle without torch's magic number)")
    protocol, _ = _unpickle(stream, source)
    if protocol != _LEGACY_PROTOCOL:
        raise WeightsError(f"{source}: unsupported legacy torch protocol version {protocol!r}")
    sys_info, _ = _unpickle(stream, source)
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    byteorder = "little" if little else "big"
    obj, unpickler = _unpickle(stream, source)
    keys, _ = _unpickle(stream, source)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise WeightsError(f"{source}: malformed list of storage keys")
    buffers: dict[str, np.ndarray] = {}
    for key in keys:
        storage_type = unpickler.storages.get(key)
        if storage_type is None:
            raise WeightsError(f"{source}: storage {key} is listed but no tensor names it")
        head = stream.read(8)
        if len(head) != 8:
            raise WeightsError(f"{source}: truncated before storage {key}")
        (numel,) = struct.unpack("<q" if little else ">q", head)
        nbytes = numel * storage_type.itemsize
        raw = stream.read(nbytes) if numel >= 0 else b""
        if numel < 0 or len(raw) != nbytes:
            raise WeightsError(f"{source}: storage {key} is truncated ({numel} elements declared)")
        buffers[key] = _as_elements(raw, storage_type, byteorder, source, key)
    missing = set(unpickler.storages) - set(buffers)
    if missing:
        raise WeightsError(f"{source}: storages named but not stored: {sorted(missing)[:5]}")
    return _materialize(obj, buffers, source)


def _as_elements(raw: bytes, storage_type: _StorageType, byteorder: str, source: str, key: str) -> np.ndarray:
    """A storage's bytes as a 1-D array of its elements (bfloat16 kept as uint16 bits)."""
    dtype = np.dtype(np.uint16) if storage_type.dtype is _BFLOAT16 else storage_type.dtype
    if len(raw) % dtype.itemsize:
        raise WeightsError(
            f"{source}: storage {key} holds {len(raw)} bytes, not a whole number of {dtype.itemsize}-byte elements"
        )
    order = "<" if byteorder == "little" else ">"
    return np.frombuffer(raw, dtype=dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype)


def _materialize(obj: object, buffers: dict[str, np.ndarray], source: str) -> object:
    """Replace every tensor record in a plain container tree by its numpy array."""
    if isinstance(obj, _TensorRef):
        return _tensor_array(obj, buffers[obj.storage.key], source)
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialize(v, buffers, source)
        return out
    if isinstance(obj, list):
        return [_materialize(v, buffers, source) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v, buffers, source) for v in obj)
    if isinstance(obj, _StorageRef | _StorageType):
        raise WeightsError(f"{source}: holds a bare storage, not a tensor")
    return obj


def _tensor_array(ref: _TensorRef, buffer: np.ndarray, source: str) -> np.ndarray:
    storage = ref.storage
    start = storage.offset + ref.offset
    limit = min(len(buffer), storage.offset + storage.numel)
    if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise WeightsError(f"{source}: a tensor on storage {storage.key} has a negative extent")
    is_bf16 = storage.type.dtype is _BFLOAT16
    native = np.dtype(np.uint16) if is_bf16 else storage.type.dtype
    if 0 in ref.size:
        array = np.zeros(ref.size, dtype=native)
    else:
        last = start + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
        if start >= limit or last >= limit:
            raise WeightsError(
                f"{source}: a tensor of size {ref.size} at offset {ref.offset} runs past "
                f"the end of storage {storage.key} ({storage.numel} elements)"
            )
        base = buffer[start:limit]
        view = np.lib.stride_tricks.as_strided(
            base,
            shape=ref.size,
            strides=tuple(s * base.itemsize for s in ref.stride),
            writeable=False,
        )
        # a C-ordered copy in native byte order, owning its memory
        array = np.array(view, dtype=native, order="C", copy=True)
    if is_bf16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def state_dict_from_checkpoint(obj: object, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Find the state dict in what `load_torch_checkpoint` returned.

    Accepts a state dict itself (names to arrays) or a checkpoint wrapping one
    under `state_dict`, `model_state_dict`, `model`, `module`, `net`,
    `network`, `weights` or `params` (nested wrappers too). A `module.` prefix
    on every key (left by DataParallel) is removed.
    """
    found = _find_state_dict(obj, depth=0)
    if found is None:
        if isinstance(obj, dict):
            shown = ", ".join(repr(k) for k in list(obj)[:8])
            what = f"a dict with keys {shown}"
        else:
            what = f"a {type(obj).__name__}"
        raise WeightsError(
            f"{source}: no state dict found (expected names mapped to tensors, or one under "
            f"{', '.join(repr(k) for k in _WRAPPER_KEYS)}); the file holds {what}"
        )
    if all(k.startswith("module.") for k in found):
        found = {k[len("module.") :]: v for k, v in found.items()}
    return found


_WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "weights",
    "params",
)


def _find_state_dict(obj: object, depth: int) -> dict[str, np.ndarray] | None:
    if not isinstance(obj, dict) or depth > 3:
        return None
    if obj and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
        return dict(obj)
    for key in _WRAPPER_KEYS:
        if key in obj:
            found = _find_state_dict(obj[key], depth + 1)
            if found is not None:
                return found
    return None


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a torch state dict file (zip or legacy format) into numpy arrays.

    Equivalent to `torch.load(path, weights_only=True)` followed by
    `state_dict_from_checkpoint`, without torch and without running any code
    from the file.
    """
    return state_dict_from_checkpoint(load_torch_checkpoint(path), str(path))


# ------------------------------------------------------------------------ caffe

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
