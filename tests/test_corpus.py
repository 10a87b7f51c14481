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
]
# Static exports whose reshapes freeze the traced size: they run at EXPORT_SIZE only.
FIXED_SIZE = {"shufflenet_v1", "shufflenet_v2", "attention", "unet"}
# At opset 9 with dynamic shapes torch's TorchScript exporter cannot write a ceil-mode pool's
# padding, a chunk of unknown size, nor an interpolation to a size known at run time.
TORCH_CANNOT_EXPORT = {
    (arch, 9, True) for arch in ("squeezenet1.0", "squeezenet1.1", "inception_v2", "attention", "unet")
}


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
    fixed = not case.dynamic and case.arch in FIXED_SIZE
    assert manifest.fixed_size == (EXPORT_SIZE if fixed else 0)

    side = CHECK_SIZE if case.dynamic else EXPORT_SIZE
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, side, side)).astype(np.float32)
    session = ort.InferenceSession(str(model_dir / manifest.layers[-1].graph), providers=["CPUExecutionProvider"])
    feeds = {
        "image": image,
        "layer_weights": np.ones(2, np.float32),
        "channel_weights": np.ones(manifest.channel_total, np.float32),
    }
    _, grad, _ = session.run(None, feeds)
    reference = build(case.arch)
    exact = _torch_gradient(reference, image, torch.float64)
    torch_error = _relative_l2(_torch_gradient(reference, image, torch.float32), exact)
    our_error = _relative_l2(grad, exact)
    _report(case, our_error, torch_error, export_seconds, onnx_path)
    assert our_error <= max(1e-3, 2 * torch_error), f"ours {our_error:.2e}, torch float32 {torch_error:.2e}"


def _report(case: CorpusCase, ours: float, torch_error: float, seconds: float, onnx_path: Path) -> None:
    target = os.environ.get("DREAMSTREAM_CORPUS_REPORT")
    if not target:
        return
    ops = sorted({node.op_type for node in onnx.load(str(onnx_path)).graph.node})
    line = {"case": case.name, "ours": ours, "torch_float32": torch_error, "export_s": round(seconds, 2), "ops": ops}
    with open(target, "a") as out:
        out.write(json.dumps(line) + "\n")


def test_corpus_models_dream_through_a_real_server(corpus_dir: Path, start_server) -> None:
    """Every model the corpus tests exported is served by one real server and dreams on a photograph,
    the fixed-size ones too."""
    from dreamstream.client import DreamClient, Frame
    from dreamstream.server.models import ModelRepository

    models = corpus_dir / "models"
    exported = sorted(path.name for path in models.iterdir() if (path / "manifest.json").is_file())
    if not exported:
        pytest.skip("no corpus model was exported in this run")
    repository = ModelRepository(models, device="cpu")
    repository.load()
    server = start_server(repository)
    photo = shared_image("coffee.png")
    with DreamClient(server.target) as client:
        for name in exported:
            # A fixed-size model (fixed_size 64) is dreamed by the server in tiles of its size.
            events = client.dream(photo, model=name, max_size=96, octaves=2)
            frames = [event for event in events if isinstance(event, Frame)]
            assert frames and frames[-1].final and max(frames[-1].width, frames[-1].height) == 96, name
