"""The dreamstream server: a DeepDream engine over ONNX Runtime behind a gRPC service.

Modules, from the inside out: `providers` (which device runs), `models` (the
model repository and its sessions), `engine` (the ascent, knows nothing of
gRPC), `imaging` (decode and encode pictures), `service` (the gRPC adapter),
`app` (the gRPC server with health and reflection), `cli` (`dreamstream serve`).
"""
