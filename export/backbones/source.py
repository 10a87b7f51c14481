"""Where a recipe's parameters come from: a weight file, or seeded random values for tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dreamstream.export.weights import require


class WeightSource:
    """Hands a recipe each parameter it asks for, checking its shape.

    With real weights a missing or mis-shaped parameter is a `WeightsError` naming
    the layer and the expected shape. With `random(seed)` every parameter is
    invented with a plausible scale, so architectures can be exported and tested
    without anyone's weight file.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray] | None, origin: str, seed: int = 0) -> None:
        self.arrays = arrays
        self.origin = origin
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], origin: str) -> WeightSource:
        return cls(arrays, origin)

    @classmethod
    def random(cls, seed: int = 0) -> WeightSource:
        return cls(None, f"random weights (seed {seed})", seed)

    def has(self, key: str) -> bool:
        """Whether the weights hold `key` (random weights hold every parameter)."""
        return self.arrays is None or key in self.arrays

    def get(self, key: str, shape: Sequence[int]) -> np.ndarray:
        if self.arrays is not None:
            return np.asarray(require(self.arrays, key, shape, self.origin), dtype=np.float32)
        return self._invent(key, tuple(shape))

    def _invent(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        rng = self._rng
        if key.endswith("running_var"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if key.endswith("running_mean") or key.endswith(".bias") or key.endswith("/bias"):
            return rng.normal(0.0, 0.1, shape).astype(np.float32)
        if len(shape) == 1:  # a batch norm's scale
            return rng.uniform(0.8, 1.2, shape).astype(np.float32)
        fan_in = int(np.prod(shape[1:]))
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
