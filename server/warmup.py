"""Warm start: one tiny dream per model before the server reports SERVING.

Loading a model opens its default step graph, but ONNX Runtime still does one-time work
on a session's first run (allocating its arenas, preparing kernels, starting its threads).
Without a warm-up, the first caller after every start or scale-up pays for it.
"""

from __future__ import annotations

import logging
import time

from dreamstream.server.engine import DreamEngine, DreamSpec

log = logging.getLogger(__name__)


def warm_up(engine: DreamEngine) -> dict[str, float]:
    """Dream one step on seeded noise of each model's smallest size, on its default layers.

    Returns the seconds each model's warm-up took.
    """
    seconds: dict[str, float] = {}
    for model in engine.models:
        began = time.perf_counter()
        side = model.manifest.min_size
        spec = DreamSpec(noise_size=(side, side), model=model.name, octaves=1, steps_per_octave=1, jitter=0)
        for _ in engine.run(engine.plan(spec)):
            pass
        seconds[model.name] = time.perf_counter() - began
        log.info("warmed up %s in %.2f s", model.name, seconds[model.name])
    return seconds
