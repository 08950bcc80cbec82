"""The deployment parts of the ``anomaly-zoo`` command line (called from ``cli.main`` before LightningCLI parses).

- ``anomaly-zoo export ...`` is its own small parser (:mod:`anomaly_zoo.export.cli`).
- ``anomaly-zoo predict --ckpt_path model.ckpt imgs/ 'more/*.png'``: positional paths or globs are the short
  form of ``--data images --data.path [...]``.
- ``predict`` with ``--ckpt_path`` takes the input format the model was fitted at (``image_size``,
  ``normalization``, ``interpolation``) from the checkpoint unless given on the command line.
- ``predict`` options ``--output_dir DIR``, ``--save_maps [true]``, ``--save_masks [true]`` go to the
  prediction writer; ``fit`` options ``--threshold.method``, ``--threshold.quantile``,
  ``--threshold.normalize``, ``--threshold.per_category``, ``--threshold.min_category_images`` choose how
  thresholds are calibrated (see ``models/components/thresholds.py``).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomaly_zoo.data.errors import DatasetError

__all__ = ["BOOLEANS", "option_value", "prepare_deploy_arguments", "run_export"]

_WRITER_FLAGS = {"--save_maps": "save_maps", "--save_masks": "save_masks"}
_WRITER_VALUES = {"--output_dir": "output_dir"}
_THRESHOLD = {"--threshold.method": ("method", str), "--threshold.quantile": ("quantile", float),
              "--threshold.normalize": ("normalize", None), "--threshold.per_category": ("per_category", None),
              "--threshold.min_category_images": ("min_category_images", int)}
#: The words a true/false option takes (here and in the exported-model predict).
BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def run_export(argv: Sequence[str]) -> int:
    from anomaly_zoo.export.cli import main as export_main

    return export_main(list(argv))


def prepare_deploy_arguments(argv: Sequence[str]) -> list[str]:
    """Take the deployment options out of ``argv`` (applied to the model class) and expand the predict short form."""
    argv = list(argv)
    if not argv:
        return argv
    argv = _take_threshold_options(argv)
    if argv[0] != "predict":
        return argv
    argv, writer = _take_writer_options(argv)
    if writer:
        from anomaly_zoo.models.base import AnomalyModule

        AnomalyModule.prediction_options = {**AnomalyModule.prediction_options, **writer}
    argv, positional = _split_positional(argv)
    if positional:
        if any(a.split("=", 1)[0] in ("--data", "--data.class_path") for a in argv):
            raise DatasetError(f"give images either as paths ({' '.join(positional)}) or with --data, not both.")
        # Right after the subcommand: the user's own --data.* options (category, batch size) must come after
        # the class, or jsonargparse gives them to the base class and carries its defaults into ImageFiles.
        argv[1:1] = ["--data", "anomaly_zoo.data.images.ImageFiles",
                     f"--data.init_args.path=[{', '.join(map(_quote, positional))}]"]
    return _with_checkpoint_defaults(argv)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bool(option: str, value: str) -> bool:
    if value.lower() not in BOOLEANS:
        raise DatasetError(f"{option} takes true or false, got '{value}'.")
    return BOOLEANS[value.lower()]


def _take_threshold_options(argv: list[str]) -> list[str]:
    out, options, i = [], {}, 0
    while i < len(argv):
        key, eq, value = argv[i].partition("=")
        if key in _THRESHOLD:
            if not eq:
                if i + 1 >= len(argv):
                    raise DatasetError(f"{key} needs a value.")
                value, i = argv[i + 1], i + 1
            name, kind = _THRESHOLD[key]
            options[name] = _bool(key, value) if kind is None else kind(value)
        else:
            out.append(argv[i])
        i += 1
    if options:
        from anomaly_zoo.models.base import AnomalyModule
        from anomaly_zoo.models.components.thresholds import ThresholdOptions

        current = AnomalyModule.threshold_options
        try:
            AnomalyModule.threshold_options = ThresholdOptions(**{**current.__dict__, **options})
        except ValueError as err:
            raise DatasetError(str(err)) from None
    return out


def _take_writer_options(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    out, options, i = [], {}, 0
    while i < len(argv):
        key, eq, value = argv[i].partition("=")
        if key in _WRITER_FLAGS:
            if not eq and i + 1 < len(argv) and argv[i + 1].lower() in BOOLEANS:
                value, eq, i = argv[i + 1], "=", i + 1
            options[_WRITER_FLAGS[key]] = _bool(key, value) if eq else True
        elif key in _WRITER_VALUES:
            if not eq:
                if i + 1 >= len(argv):
                    raise DatasetError(f"{key} needs a value.")
                value, i = argv[i + 1], i + 1
            options[_WRITER_VALUES[key]] = value
        else:
            out.append(argv[i])
        i += 1
    return out, options


def _split_positional(argv: list[str]) -> tuple[list[str], list[str]]:
    """(options, positional paths) of ``predict ...``: a token that is no option's value is a path."""
    options, positional, i = [argv[0]], [], 1
    while i < len(argv):
        token = argv[i]
        if token.startswith("-"):
            options.append(token)
            if "=" not in token and token not in ("-h", "--help") and i + 1 < len(argv) \
                    and not argv[i + 1].startswith("-"):
                options.append(argv[i + 1])
                i += 1
        else:
            positional.append(token)
        i += 1
    return options, positional


def option_value(argv: Sequence[str], names: tuple[str, ...]) -> str | None:
    """The value of the first of ``names`` in ``argv`` (``--opt v`` or ``--opt=v``); None when absent."""
    for i, token in enumerate(argv):
        key, eq, value = token.partition("=")
        if key in names:
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def _data_parameters(argv: list[str]) -> set[str]:
    class_path = option_value(argv, ("--data", "--data.class_path"))
    if not class_path or "." not in class_path:
        return set()  # data from a config file: it already says how it was trained
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return set()
    return set(inspect.signature(cls.__init__).parameters)


def _with_checkpoint_defaults(argv: list[str]) -> list[str]:
    """``--model`` (when neither it nor a config is given) and the data's input format, from ``--ckpt_path``."""
    ckpt = option_value(argv, ("--ckpt_path",))
    if not ckpt or not Path(ckpt).is_file():
        return argv
    deploy = _checkpoint_deploy_data(Path(ckpt))
    model_class = deploy.get("model_class")
    if model_class and option_value(argv, ("--model", "--model.class_path", "--config", "-c")) is None:
        argv += ["--model", model_class]
    preprocessing = deploy.get("preprocessing")
    if not preprocessing:
        return argv
    accepted = _data_parameters(argv)
    given = " ".join(argv)
    added = []
    for key in ("image_size", "normalization", "interpolation"):
        value = preprocessing.get(key)
        if key in accepted and value is not None and f".{key}" not in given and not (
                key == "normalization" and value == "custom"):
            text = f"[{value[0]}, {value[1]}]" if key == "image_size" else str(value)
            argv.append(f"--data.init_args.{key}={text}")
            added.append(f"{key} {text}")
    if added:
        sys.stderr.write(f"From the checkpoint: {', '.join(added)}\n")
    return argv


def _checkpoint_deploy_data(path: Path) -> dict[str, Any]:
    """The checkpoint's ``anomaly_zoo`` entry (model class, thresholds, preprocessing); {} if unreadable here."""
    import torch

    try:
        # Safe loading (tensors and plain data only); mmap: only the small metadata is read, not every weight.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not readable here: the CLI's checkpoint check reports it properly
        return {}
    return checkpoint.get("anomaly_zoo") or {}
