"""The reference the benchmarks race against: DeepDream in plain PyTorch eager mode.

It is the algorithm of `DreamEngine.run`, written the way a user's PyTorch
script would write it, on the backbones of `tests/reference_models.py` (the
modules the tests check our gradient graphs against) with the same weights:

- the same octave schedule (`octave_sizes`) and the same `resize` for the
  octaves and for carrying each octave's detail up to the next;
- the same seeded jitter draws, `rng.integers(-jitter, jitter + 1, size=2)`,
  applied with `torch.roll` and undone on the gradient;
- the loss of the graph contract (`dreamstream.modeldir`) with every
  channel weight 1: the sum over the selected layers of
  weight / (C * H * W) * sum(a ** 2);
- the gradient from torch autograd, normalised by its mean absolute value,
  `step_size` times it added, the picture clipped to [0, 1].

It yields the engine's own `Step` and `Octave` events, so one piece of code
times both. float32 throughout, like the exported graphs. Used by the
benchmarks and their tests only: torch is no dependency of the server.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from dreamstream.server.engine import DreamParams, Octave, Step
from dreamstream.server.engine.octaves import octave_sizes, resize

_TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from reference_models import Reference, build_reference  # noqa: E402  (found through the path above)

# The step graphs add this to the mean absolute gradient before dividing by it
# (dreamstream.export.dream.NORMALISE_EPSILON; a test keeps the two equal).
NORMALISE_EPSILON = 1e-8


class TorchDream:
    """DeepDream on one backbone and one choice of layers, in PyTorch eager mode on the CPU."""

    def __init__(
        self,
        backbone: str,
        weights: Mapping[str, np.ndarray],
        layers: Mapping[str, float],
        min_size: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """`weights` as `build_reference` takes them; `layers` maps layer names to loss weights;
        `min_size` is the model's smallest octave side (the manifest's), for the octave schedule.

        `dtype` float64 gives a yardstick for how far float32 rounding alone moves a dream:
        the ascent then runs in float64, the octave resizing stays float32 (Pillow's).
        """
        self.model: Reference = build_reference(backbone, weights).to(dtype)
        self.dtype = dtype
        self.layers = {name: float(weight) for name, weight in layers.items() if weight != 0}
        if not self.layers:
            raise ValueError("at least one layer needs a non-zero weight")
        self.min_size = min_size

    def loss(self, image: torch.Tensor) -> torch.Tensor:
        """The dream loss of a 1x3xHxW picture: sum of weight / (C*H*W) * sum(a^2) over the layers."""
        activations = self.model(image, list(self.layers))
        return sum(
            weight / activations[name].numel() * activations[name].square().sum()
            for name, weight in self.layers.items()
        )

    def step(self, image: torch.Tensor, jitter: tuple[int, int], step_size: float) -> tuple[torch.Tensor, float]:
        """One ascent step on a 1x3xHxW picture rolled by `jitter` (dy, dx): (the new picture, the loss)."""
        rolled = torch.roll(image, shifts=jitter, dims=(2, 3)).requires_grad_(True)
        loss = self.loss(rolled)
        (grad,) = torch.autograd.grad(loss, rolled)
        with torch.no_grad():
            grad = torch.roll(grad, shifts=(-jitter[0], -jitter[1]), dims=(2, 3))
            grad = grad / (grad.abs().mean() + NORMALISE_EPSILON)
            return (image + step_size * grad).clamp_(0.0, 1.0), float(loss)

    def run(self, image: np.ndarray, params: DreamParams) -> Iterator[Step | Octave]:
        """Dream on `image` (HxWx3 float32 RGB in [0, 1]); the events `DreamEngine.run` yields."""
        height, width = image.shape[:2]
        sizes = octave_sizes(height, width, params.octaves, params.octave_scale, self.min_size)
        rng = np.random.default_rng(params.seed)
        original = np.ascontiguousarray(image.transpose(2, 0, 1), np.float32)

        began = time.perf_counter()
        total_work = params.steps_per_octave * sum(h * w for h, w in sizes)
        work = 0
        detail: np.ndarray | None = None
        for octave, (height, width) in enumerate(sizes, start=1):
            base = resize(original, height, width)
            start = base if detail is None else base + resize(detail, height, width)
            picture = torch.from_numpy(np.clip(start, 0, 1)[None]).to(self.dtype)
            for step in range(1, params.steps_per_octave + 1):
                dy, dx = rng.integers(-params.jitter, params.jitter + 1, size=2, dtype=np.int64)
                picture, loss = self.step(picture, (int(dy), int(dx)), params.step_size)
                work += height * width
                yield Step(
                    octave=octave,
                    octaves=len(sizes),
                    step=step,
                    steps=params.steps_per_octave,
                    loss=loss,
                    elapsed=time.perf_counter() - began,
                    done=work / total_work,
                )
            result = picture[0].to(torch.float32).numpy()
            detail = result - base
            yield Octave(
                octave=octave,
                octaves=len(sizes),
                image=result.transpose(1, 2, 0),
                final=octave == len(sizes),
                elapsed=time.perf_counter() - began,
            )
