"""The export tool: CNN backbones to ONNX graphs of the dream loss and its gradient.

`dreamstream.export.api.export_model` is the entry point; `manifest` is the
contract with the server and imports nothing beyond the standard library.
"""
