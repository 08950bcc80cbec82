"""``anomaly-zoo export --ckpt_path CKPT --format onnx|torchscript [--output PATH]``.

Rebuilds the model from the checkpoint (every weight from it, nothing downloaded), exports the inference
graph, runs the written file on fresh images and prints the largest differences to PyTorch; exits 1 when
they exceed ``--tolerance`` or the model cannot be exported (with the reason).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.export.checkpoint import load_model
from anomaly_zoo.export.exporter import EXPORT_FORMATS, ExportError, export_model
from anomaly_zoo.export.to_onnx import ONNX_EXPORTERS

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-zoo export",
        description="Export a trained detector (frozen backbone + head → anomaly map + image score) with a parity "
        "check. Input: float32 (N, 3, H, W), RGB, resized and normalised as recorded in the checkpoint (see the "
        "'.json' written beside the file, also embedded as metadata: ONNX metadata_props / TorchScript extra file "
        "'anomaly_zoo.json'). Outputs: anomaly_map (N, 1, H, W) and pred_score (N,), normalised to [0, 1] when the "
        "checkpoint normalises; the thresholds are in the metadata.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `anomaly-zoo fit`")
    parser.add_argument("--format", default="onnx", choices=EXPORT_FORMATS, dest="export_format")
    parser.add_argument("--output", default=None, help="output file (default: beside the checkpoint, <name>.onnx|.pt)")
    parser.add_argument("--image_size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="input size (default: the size the model was fitted at, from the checkpoint)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="fix the batch size (default: dynamic); for models that build batch-sized constants")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |Δ| of maps and scores")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--onnx_exporter", default="auto", choices=ONNX_EXPORTERS,
                        help="torch.onnx path: dynamo (torch.export), tracing, or auto (dynamo, then tracing)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    ckpt = Path(args.ckpt_path)
    suffix = ".onnx" if args.export_format == "onnx" else ".pt"
    output = Path(args.output) if args.output else ckpt.with_suffix(suffix)
    try:
        model = load_model(ckpt)
        result = export_model(model, args.export_format, output, image_size=args.image_size,
                              tolerance=args.tolerance, opset=args.opset, onnx_exporter=args.onnx_exporter,
                              batch_size=args.batch_size)
    except (ExportError, DatasetError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    print(result.summary())
    thresholds = result.metadata.get("thresholds")
    if thresholds:
        print(f"Thresholds (metadata): image {thresholds['image']:.6g}, pixel {thresholds['pixel']:.6g}"
              + (" (normalised scores)" if result.metadata["normalized"] else ""))
        for name, own in (thresholds.get("per_category") or {}).items():
            print(f"  {name}: image {own['image']:.6g}, pixel {own['pixel']:.6g}")
        if thresholds.get("per_category"):
            print(f"Threshold mode: {thresholds.get('mode', 'global')} (per-category thresholds listed above).")
    else:
        print("No thresholds in this checkpoint (fit calibrates them): the metadata has none.")
    print(f"Input: {result.metadata['input']['description']}. Metadata also in {result.path}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
