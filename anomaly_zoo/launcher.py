"""The ``anomaly-zoo`` console script: ``predict`` with an exported model runs without torch, the rest is the CLI.

``anomaly-zoo predict --ckpt_path model.onnx imgs/`` goes to :mod:`anomaly_zoo.export.predict` (numpy +
onnxruntime; no torch, no Lightning, so a single image takes well under a second); every other command,
and ``predict`` with a Lightning checkpoint, goes to :func:`anomaly_zoo.cli.main`, imported only then.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def exported_model_path(argv: Sequence[str]) -> str | None:
    """The ``--ckpt_path`` of ``predict ...`` when it names an exported model (``anomaly-zoo export``'s file)."""
    if not argv or argv[0] != "predict":
        return None
    from anomaly_zoo.deploy_cli import option_value
    from anomaly_zoo.export.runtime import is_exported_model

    value = option_value(argv, ("--ckpt_path",))
    return value if value and is_exported_model(value) else None


def predict_if_exported(argv: Sequence[str]) -> None:
    """Run ``predict`` with an exported model and exit (SystemExit with its code); otherwise return."""
    if exported_model_path(argv) is not None:
        from anomaly_zoo.export.predict import main as predict_exported

        raise SystemExit(predict_exported(list(argv[1:])))


def main(args: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    predict_if_exported(argv)
    from anomaly_zoo.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
