"""`dreamstream export` and `dreamstream layers`: the export tool's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreamstream.cmdline import layer_table
from dreamstream.modeldir import ManifestError, read_manifest


def add_export_parsers(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="export a backbone into a model directory",
        description="Export a CNN backbone into MODELS_DIR/NAME: ONNX graphs of the dream loss and its "
        "gradient, plus manifest.json.",
    )
    export.add_argument("backbone", help="efficientnet-lite0, googlenet-bvlc, vgg16, ..., or onnx")
    export.add_argument("--out", required=True, type=Path, help="the models directory")
    export.add_argument("--name", help="the model's name (default: the backbone's)")
    export.add_argument("--weights", type=Path, help="weight file (.pth, .caffemodel or .npz)")
    export.add_argument("--random-weights", action="store_true", help="invent weights (for tests)")
    export.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    export.add_argument("--onnx", type=Path, help="with `onnx`: the ONNX classifier")
    export.add_argument(
        "--layers", help="with `onnx`: comma-separated tensor names to dream on, or `auto` to pick a few"
    )
    export.add_argument("--mean", help="with `onnx`: per-channel mean after scaling, e.g. 0.485,0.456,0.406")
    export.add_argument("--std", help="with `onnx`: per-channel std, e.g. 0.229,0.224,0.225")
    export.add_argument("--bgr", action="store_true", help="with `onnx`: the network takes BGR")
    export.add_argument("--scale", type=float, default=1.0, help="with `onnx`: pixel range (255 for 0..255)")
    export.set_defaults(func=run_export)

    layers = subparsers.add_parser(
        "layers",
        help="list the layers of an exported model, or the candidates of an ONNX file",
        description="List the layers a model can dream on (name, channels, stride), deepest last. With "
        "--onnx FILE, list the tensors of a classifier not yet exported that `export onnx --layers` can take.",
    )
    layers.add_argument("model_dir", type=Path, nargs="?", help="MODELS_DIR/NAME")
    layers.add_argument("--onnx", type=Path, help="an ONNX classifier to list candidate layers of")
    layers.set_defaults(func=run_layers)


def _triple(text: str | None, default: tuple[float, float, float], flag: str) -> tuple[float, float, float]:
    if text is None:
        return default
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"{flag} takes three comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


def run_export(args: argparse.Namespace) -> int:
    from dreamstream.export.api import ExportError, OnnxOptions, export_model
    from dreamstream.export.autodiff import GradientError
    from dreamstream.export.backbones.onnx_file import OnnxBackboneError
    from dreamstream.export.weights import WeightsError

    try:
        onnx_options = None
        if args.backbone == "onnx":
            if args.onnx is None or not args.layers:
                raise ExportError("export onnx needs --onnx FILE and --layers T1,T2,...")
            onnx_options = OnnxOptions(
                path=args.onnx,
                layers=[name for name in args.layers.split(",") if name],
                mean=_triple(args.mean, (0.0, 0.0, 0.0), "--mean"),
                std=_triple(args.std, (1.0, 1.0, 1.0), "--std"),
                bgr=args.bgr,
                scale=args.scale,
            )
        model_dir = export_model(
            args.backbone,
            args.out,
            name=args.name,
            weights=args.weights,
            random_weights=args.random_weights,
            seed=args.seed,
            onnx_options=onnx_options,
        )
    except (ExportError, WeightsError, GradientError, OnnxBackboneError, FileNotFoundError, ValueError) as error:
        print(f"dreamstream export: error: {error}", file=sys.stderr)
        return 2
    manifest = read_manifest(model_dir)
    print(f"exported {manifest.backbone} to {model_dir} ({len(manifest.layers)} layers)")
    if manifest.fixed_size:
        side = manifest.fixed_size
        print(
            f"note: the network runs only on {side}x{side} pictures (its ONNX file fixes the shapes); "
            f"the manifest records fixed_size={side}, for servers to dream it in {side}x{side} tiles "
            "(smaller pictures padded)"
        )
    elif manifest.size_step > 1:
        low, step = manifest.min_size, manifest.size_step
        print(
            f"note: the network runs only on sides of {low} + k * {step} px (its branches line up at those "
            f"sizes only); the manifest records size_step={step}, for servers to pad each octave to such a side"
        )
    return 0


def run_layers(args: argparse.Namespace) -> int:
    if (args.onnx is None) == (args.model_dir is None):
        print("dreamstream layers: error: give a model directory or --onnx FILE", file=sys.stderr)
        return 2
    if args.onnx is not None:
        return _list_candidates(args.onnx)
    try:
        manifest = read_manifest(args.model_dir)
    except ManifestError as error:
        print(f"dreamstream layers: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(layer_table(manifest.layers, manifest.default_layers)))
    return 0


def _list_candidates(path: Path) -> int:
    from dreamstream.export.backbones.onnx_file import OnnxBackboneError, auto_layers, candidate_layers

    try:
        candidates = candidate_layers(path)
    except OnnxBackboneError as error:
        print(f"dreamstream layers: error: {error}", file=sys.stderr)
        return 2
    if not candidates:
        print(f"dreamstream layers: error: {path.name} has no [N,C,H,W] block outputs to dream on", file=sys.stderr)
        return 2
    width = max(len("tensor"), *(len(candidate.name) for candidate in candidates))
    op_width = max(len("op"), *(len(candidate.op) for candidate in candidates))
    print(f"{'tensor':<{width}}  {'op':<{op_width}}  channels  stride")
    for candidate in candidates:
        print(f"{candidate.name:<{width}}  {candidate.op:<{op_width}}  {candidate.channels:>8}  {candidate.stride:>6}")
    print(f"--layers auto picks: {','.join(auto_layers(candidates))}")
    return 0
