"""Classifiers as users bring them: exported by torch.onnx at several opsets, static and dynamic
shapes, and rewritten the way other converters write them; each one exports, its gradient
agrees with torch autograd in float64, and it dreams through a real server.

The normal run takes a representative subset (each failure this corpus found, once);
DREAMSTREAM_LONG_TESTS=1 runs every architecture at opsets 9, 13, 17 and 21, static
and dynamic, through torch's dynamo exporter too, and every converter rewrite.
DREAMSTREAM_CORPUS_REPORT=FILE appends one JSON line per exported case (relative
errors, op types, export time) for the notes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import assert_graphs_pass_checker_and_cuda_audit, shared_image
from corpus_models import ARCHITECTURES, build
from keras_models import APPLICATIONS as KERAS_APPLICATIONS
from keras_models import ARCHITECTURES as KERAS_ARCHITECTURES
from onnx_variants import VARIANTS

from dreamstream.export.api import OnnxOptions, export_model
from dreamstream.modeldir import read_manifest

LONG = os.environ.get("DREAMSTREAM_LONG_TESTS") == "1"
EXPORT_SIZE = 64  # the side torch traces at: the declared size of a static export
CHECK_SIZE = 72  # a dynamic export is checked at another size than it was traced at


@dataclass(frozen=True)
class CorpusCase:
    arch: str
    opset: int
    dynamic: bool = True
    variants: tuple[str, ...] = ()
    exporter: str = "torchscript"  # or "dynamo": torch.export's ONNX exporter (opset 18 and up, onnxscript)

    @property
    def name(self) -> str:
        shape = "dynamic" if self.dynamic else "static"
        return "-".join([self.arch, self.exporter, f"opset{self.opset}", shape, *self.variants])


# Each case here once failed to export, or exercises a path the others do not.
REPRESENTATIVE = [
    CorpusCase("densenet121", 9, variants=("bn_as_mul_add", "constants_as_nodes")),  # Caffe2-style, SSA
    CorpusCase("inception_v2", 9, False, ("bn_as_mul_add",)),  # concatenations of Caffe2 batch norms
    CorpusCase("shufflenet_v2", 13),  # channel split and shuffle from run-time shape sub-graphs
    CorpusCase("convnext_t", 21),  # Gelu (newer than our opset), LayerNormalization, MatMul
    CorpusCase("unet", 13),  # Resize to run-time sizes, nearest and linear
    CorpusCase("style_net", 9, variants=("old_dropout",)),  # Upsample -> Resize, InstanceNormalization
    CorpusCase("efficientnet_b0", 13, False, ("explicit_pads", "gemm_as_matmul_add", "flatten_as_reshape")),
    CorpusCase("xception", 17),  # PRelu, Elu, Selu, LeakyRelu, Softplus
    CorpusCase("mobilenet_v3", 17),  # HardSwish, HardSigmoid, squeeze-excitation
    CorpusCase("shufflenet_v1", 17, False),  # channel shuffles fixed at the traced size: a fixed-size model
    CorpusCase("convnext_t", 20, False, exporter="dynamo"),  # torch's default exporter: attributes newer than 17
    # torch's default exporter writes LRN as a 5-D Reshape (frozen at the traced size), Pad and 3-D AveragePool
    CorpusCase("googlenet_lrn", 20, False, exporter="dynamo"),
    # TorchScript's LRN: an If on an axis' size (the branch it takes inlined), a pool over a computed view
    CorpusCase("googlenet_lrn", 13),
    CorpusCase("aligned_inception", 13),  # branches that line up every 8 px only: the manifest's size_step
    CorpusCase("mobilenet_v2", 17, variants=("onnxslim",)),  # as onnxslim simplifies it
]
# Static exports whose reshapes freeze the traced size: they run at EXPORT_SIZE only.
FIXED_SIZE = {"shufflenet_v1", "shufflenet_v2", "attention", "unet"}
# At opset 9 with dynamic shapes torch's TorchScript exporter cannot write a ceil-mode pool's
# padding, a chunk of unknown size, nor an interpolation to a size known at run time.
TORCH_CANNOT_EXPORT = {
    (arch, 9, True)
    for arch in ("squeezenet1.0", "squeezenet1.1", "inception_v2", "attention", "unet", "aligned_inception",
                 "googlenet_lrn")
}  # fmt: skip
# Static exports that freeze the traced size with one exporter only: TorchScript's LocalResponseNorm
# reshapes to the traced size (dynamo's inserts an axis, which the export writes as an Unsqueeze).
FIXED_BY_EXPORTER = {("torchscript", "googlenet_lrn")}
# Sides a network runs on, by the manifest's size_step: one that runs every 8 px only.
SIZE_STEP = {"aligned_inception": 8}


def _long_cases() -> list[CorpusCase]:
    cases = [
        CorpusCase(arch, opset, dynamic)
        for arch in ARCHITECTURES
        for opset in (9, 13, 17, 21)
        for dynamic in (True, False)
        if (arch, opset, dynamic) not in TORCH_CANNOT_EXPORT
    ]
    cases += [CorpusCase(arch, 20, False, exporter="dynamo") for arch in ARCHITECTURES]
    for arch in ("densenet121", "resnext", "mobilenet_v2"):
        for opset in (9, 17):
            cases += [CorpusCase(arch, opset, variants=(variant,)) for variant in VARIANTS]
    return cases


CASES = _long_cases() if LONG else REPRESENTATIVE


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def _torch_onnx(case: CorpusCase, folder: Path) -> Path:
    """The architecture as torch.onnx (TorchScript exporter) writes it, then rewritten."""
    path = folder / f"{case.name}.onnx"
    model = build(case.arch)
    dynamic_axes = {"input": {0: "N", 2: "H", 3: "W"}} if case.dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; users' files come from it
        torch.onnx.export(
            model,
            (torch.rand(1, 3, EXPORT_SIZE, EXPORT_SIZE),),
            str(path),
            opset_version=case.opset,
            dynamo=case.exporter == "dynamo",
            input_names=["input"],
            output_names=["mid", "deep", "logits"],
            dynamic_axes=dynamic_axes,
        )
    if case.variants:
        rewritten = onnx.load(str(path))
        for variant in case.variants:
            rewritten = VARIANTS[variant](rewritten)
        onnx.save(rewritten, str(path))
    return path


def _relative_l2(value: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


def _torch_gradient(model: torch.nn.Module, image: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """d/d image of mean(mid^2) + mean(deep^2), the dream loss with both layers at weight 1."""
    x = torch.from_numpy(image).to(dtype).requires_grad_(True)
    mid, deep, _ = model.to(dtype)(x)
    ((mid**2).mean((1, 2, 3)) + (deep**2).mean((1, 2, 3))).sum().backward()
    return x.grad.double().numpy()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corpus_model_exports_with_the_gradient_of_torch(case: CorpusCase, corpus_dir: Path) -> None:
    onnx_path = _torch_onnx(case, corpus_dir)
    started = time.perf_counter()
    model_dir = export_model(
        "onnx", corpus_dir / "models", name=case.name, onnx_options=OnnxOptions(onnx_path, ["mid", "deep"])
    )
    export_seconds = time.perf_counter() - started
    assert_graphs_pass_checker_and_cuda_audit(model_dir)
    manifest = read_manifest(model_dir)
    fixed = not case.dynamic and (case.arch in FIXED_SIZE or (case.exporter, case.arch) in FIXED_BY_EXPORTER)
    assert manifest.fixed_size == (EXPORT_SIZE if fixed else 0)
    # Opset 9 has no ceil_mode: torch writes the traced size's padding, which lines up at every size.
    aligned = not fixed and case.opset >= 10
    assert manifest.size_step == (SIZE_STEP.get(case.arch, 1) if aligned else 1)

    step, low = manifest.size_step, manifest.min_size
    side = low + -(-(CHECK_SIZE - low) // step) * step if case.dynamic else EXPORT_SIZE
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, side, side)).astype(np.float32)
    grad = _our_gradient(model_dir, image)
    reference = build(case.arch)
    exact = _torch_gradient(reference, image, torch.float64)
    torch_error = _relative_l2(_torch_gradient(reference, image, torch.float32), exact)
    our_error = _relative_l2(grad, exact)
    _report(case, our_error, torch_error, export_seconds, onnx_path)
    assert our_error <= max(1e-3, 2 * torch_error), f"ours {our_error:.2e}, torch float32 {torch_error:.2e}"


def _our_gradient(model_dir: Path, image: np.ndarray) -> np.ndarray:
    """The exported deepest gradient graph's d loss / d image, every layer at weight 1."""
    manifest = read_manifest(model_dir)
    session = ort.InferenceSession(str(model_dir / manifest.layers[-1].graph), providers=["CPUExecutionProvider"])
    feeds = {
        "image": image,
        "layer_weights": np.ones(len(manifest.layers), np.float32),
        "channel_weights": np.ones(manifest.channel_total, np.float32),
    }
    return session.run(["grad"], feeds)[0]


def _converted_by_tf2onnx(folder: Path, names: list[str], timeout: float) -> Path:
    """The Keras networks as tf2onnx converts them, with TensorFlow's float64 gradients (a
    subprocess of their own: see keras_models.py)."""
    script = Path(__file__).with_name("keras_models.py")
    command = [sys.executable, str(script), str(folder), *names]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def keras_files(corpus_dir: Path) -> Path:
    return _converted_by_tf2onnx(corpus_dir / "keras", list(KERAS_ARCHITECTURES), timeout=600)


@pytest.fixture(scope="module")
def keras_application_files(corpus_dir: Path) -> Path:
    return _converted_by_tf2onnx(corpus_dir / "keras_applications", list(KERAS_APPLICATIONS), timeout=3000)


@pytest.mark.parametrize("name", KERAS_ARCHITECTURES)
def test_keras_model_converted_by_tf2onnx_exports_with_the_gradient_of_tensorflow(
    name: str, keras_files: Path, corpus_dir: Path
) -> None:
    """tf2onnx as it delivers a file: NHWC input, the ai.onnx.ml import, 'same' pooling (auto_pad),
    feature outputs transposed to NHWC. The oracle is TensorFlow's own float64 autodiff."""
    _assert_exports_with_the_gradient_of_tensorflow(keras_files, name, corpus_dir)


@pytest.mark.skipif(not LONG, reason="set DREAMSTREAM_LONG_TESTS=1: converting each takes a minute or two")
@pytest.mark.parametrize("name", KERAS_APPLICATIONS)
def test_keras_application_converted_by_tf2onnx_exports_with_the_gradient_of_tensorflow(
    name: str, keras_application_files: Path, corpus_dir: Path
) -> None:
    """keras.applications' own networks (random weights, batch norms away from the identity)."""
    _assert_exports_with_the_gradient_of_tensorflow(keras_application_files, name, corpus_dir)


def _assert_exports_with_the_gradient_of_tensorflow(folder: Path, name: str, corpus_dir: Path) -> None:
    reference = np.load(folder / f"{name}.npz")
    options = OnnxOptions(folder / f"{name}.onnx", [str(layer) for layer in reference["layers"]])
    model_dir = export_model("onnx", corpus_dir / "models", name=name, onnx_options=options)
    assert_graphs_pass_checker_and_cuda_audit(model_dir)
    our_error = _relative_l2(_our_gradient(model_dir, reference["image"]), reference["grad64"])
    tensorflow_error = _relative_l2(reference["grad32"], reference["grad64"])
    assert our_error <= max(1e-6, 2 * tensorflow_error), f"ours {our_error:.2e}, TF float32 {tensorflow_error:.2e}"


def _report(case: CorpusCase, ours: float, torch_error: float, seconds: float, onnx_path: Path) -> None:
    target = os.environ.get("DREAMSTREAM_CORPUS_REPORT")
    if not target:
        return
    ops = sorted({node.op_type for node in onnx.load(str(onnx_path)).graph.node})
    line = {"case": case.name, "ours": ours, "torch_float32": torch_error, "export_s": round(seconds, 2), "ops": ops}
    with open(target, "a") as out:
        out.write(json.dumps(line) + "\n")


def _final_frames(corpus_dir: Path, start_server, prefixes: tuple[str, ...], sides: tuple[int, ...], **options):
    """{(model, side): final Frame} of a dream of the coffee photograph (600x400) at each side, through one
    real server of every model exported in this run whose name starts with one of `prefixes`."""
    from dreamstream.client import DreamClient, Frame
    from dreamstream.server.models import ModelRepository

    models = corpus_dir / "models"
    exported = sorted(path.name for path in models.iterdir() if (path / "manifest.json").is_file())
    exported = [name for name in exported if name.startswith(prefixes)]
    if not exported:
        pytest.skip("no such corpus model was exported in this run")
    repository = ModelRepository(models, device="cpu")
    repository.load()
    server = start_server(repository)
    finals = {}
    with DreamClient(server.target) as client:
        for name in exported:
            for side in sides:
                events = client.dream(shared_image("coffee.png"), model=name, max_size=side, **options)
                finals[name, side] = [event for event in events if isinstance(event, Frame)][-1]
    return finals


def test_corpus_models_dream_through_a_real_server(corpus_dir: Path, start_server) -> None:
    """Every model the corpus tests exported is served by one real server and dreams on a photograph,
    the fixed-size ones too (fixed_size 64: the server dreams them in tiles of its size)."""
    for (name, _), final in _final_frames(corpus_dir, start_server, ("",), (96,), octaves=2).items():
        assert final.final and (final.width, final.height) == (96, 64), name


# The models of the other toolchains and of sizes that fit, by the start of their names.
OTHER_TOOLCHAINS = (
    "keras_",
    "googlenet_lrn-",
    "aligned_inception-",
    "mobilenet_v2-torchscript-opset17-dynamic-onnxslim",
)


def test_other_toolchains_dream_on_a_non_square_photograph_at_256_and_600_px(corpus_dir: Path, start_server) -> None:
    """Not one octave fails on its size (a network that runs every 8 px only has octaves of every size)."""
    finals = _final_frames(corpus_dir, start_server, OTHER_TOOLCHAINS, (256, 600), octaves=3, steps_per_octave=2)
    for (name, side), final in finals.items():
        assert final.final and (final.width, final.height) == (side, round(side * 2 / 3)), (name, side)
