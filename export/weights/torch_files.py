"""torch state dicts (`.pth`, `.pt`) read without torch and without executing code from them.

Both the zip archive torch has written since 1.6 and the older "legacy" stream
of pickles. A torch file is a pickle, and unpickling an arbitrary pickle runs
arbitrary code, so the pickle is read by an unpickler that knows only the
handful of globals a state dict needs (an OrderedDict, the tensor rebuild
functions, the storage classes, dtypes), each mapped to a function of ours that
builds numpy arrays. Any other global is refused before it is imported. torch
itself is never imported: the export path does not depend on it.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreamstream.export.weights.errors import WeightsError

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
