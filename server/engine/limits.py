"""What one server allows a single dream: set by `dreamstream serve`'s flags, checked while planning.

Each limit bounds a cost before it is paid: the pixels a picture may decode to,
the work of the ascent (the pixels of every octave times its steps), the memory
the dream will take, and its running time (checked between steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from dreamstream.server.imaging import MAX_INPUT_PIXELS

# Default work cap, in pixel-steps (an octave's pixels times its steps, summed over
# the octaves): 20 default dreams (4 octaves x 10 steps) of a 1024x1024 picture.
DEFAULT_MAX_COST = 400_000_000
DEFAULT_MAX_INPUT_PIXELS = MAX_INPUT_PIXELS
DEFAULT_MAX_DREAM_SECONDS = 600.0

# Memory of one ascent step: a base (scratch buffers, the decoded start picture, the
# frames, the step graph's session) and a part per pixel of its octave (the activations
# kept for the gradient, the gradient, the picture). Measured as the server's peak RSS
# over its RSS before the dream, with the shared CPU arena of providers.open_session
# (`python -m benchmarks.step_memory`), on the deepest layers, 512 and 1024 px square:
# efficientnet-lite0 head 216 and 700 MiB, googlenet-bvlc inception_5b 324 and 1125 MiB
# (without an arena, as before: 303 and 797, 416 and 1208). The estimate (435 and
# 1260 MiB) keeps the old rounding up over both, some 12 % above the largest.
# Heavier backbones (VGG) need `serve --dream-bytes-per-pixel`.
STEP_BASE_BYTES = 160 * 2**20
STEP_BYTES_PER_PIXEL = 1_100
# Memory of decoding a picture per input pixel: the decoded RGBA copy and its conversion.
DECODE_BYTES_PER_PIXEL = 8


@dataclass(frozen=True)
class Limits:
    """The server's limits for one dream. `memory_budget` None: memory is not budgeted."""

    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    max_cost: int = DEFAULT_MAX_COST
    max_dream_seconds: float = DEFAULT_MAX_DREAM_SECONDS
    memory_budget: int | None = None  # bytes the dreams running at once may take together
    step_bytes_per_pixel: int = STEP_BYTES_PER_PIXEL


DEFAULT_LIMITS = Limits()


def step_memory(pixels: int, bytes_per_pixel: int = STEP_BYTES_PER_PIXEL) -> int:
    """Bytes one ascent step on a picture of `pixels` pixels is expected to take at most."""
    return STEP_BASE_BYTES + bytes_per_pixel * pixels


def decode_memory(pixels: int) -> int:
    """Bytes decoding a picture of `pixels` (input) pixels takes at most."""
    return DECODE_BYTES_PER_PIXEL * pixels
