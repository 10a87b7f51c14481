"""The DeepDream engine: plan a request, then run the octave loop over ONNX Runtime.

Its modules name the parts of the algorithm: `request` (what a caller asks,
defaults and limits), `plan` (checking a request into a plan), `octaves` (the
schedule and the resizing between octaves), `steppers` (one ascent step as one
Run of the fused step graph) and `loop` (the octaves and their steps). It knows
nothing of gRPC.
"""

from dreamstream.server.engine.loop import DreamCancelled, DreamEngine, DreamEvent, Octave, Step
from dreamstream.server.engine.plan import DreamPlan, Start, plan_dream
from dreamstream.server.engine.request import DreamParams, DreamSpec

__all__ = [
    "DreamCancelled",
    "DreamEngine",
    "DreamEvent",
    "DreamParams",
    "DreamPlan",
    "DreamSpec",
    "Octave",
    "Start",
    "Step",
    "plan_dream",
]
