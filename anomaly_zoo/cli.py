"""``anomaly-zoo {fit,validate,test,predict}``: LightningCLI with registry short names.

``--model moeclip`` / ``--data visa`` are rewritten to the registered classes' import paths before
jsonargparse sees them, so the full LightningCLI syntax (``--model.init_args.lr``, ``--config``)
keeps working unchanged.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningCLI

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.models.base import AnomalyModule
from anomaly_zoo.models.components.backbone import PretrainedWeightsError
from anomaly_zoo.registry import DATAMODULES, MODELS, Registry

# Options whose value may be a registry name: --model, --data, and nested DataModules such as
# --data.train_data / --data.init_args.test_data of the cross-dataset protocol.
_OPTION = re.compile(r"^--(model|data(?:\.init_args)?\.\w+_data|data)$")


# Model options that only affect evaluation: never taken from a checkpoint's saved hyper-parameters.
EVALUATION_OPTIONS = ("pixel_metrics", "fpr_limit", "results_dir")
# Weight sources that a checkpoint makes redundant: its state dict already holds those weights.
WEIGHTS_FROM_CHECKPOINT = {"pretrained": False, "backbone_weights": None, "official_checkpoint": None}


class UnknownNameError(SystemExit):
    pass


class RawDescriptionFormatter(DefaultHelpFormatter):
    """Keeps the line breaks of the description (the model and dataset lists)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in text.splitlines())


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve(option: str, value: str) -> str:
    registry: Registry = MODELS if option == "model" else DATAMODULES
    if value in registry:
        return _class_path(registry[value])
    for _, cls in registry.items():  # jsonargparse's own short form: the class name (`--model UniAD`)
        if cls.__name__ == value:
            return _class_path(cls)
    looks_like_path = "." in value or value.startswith(("{", "[")) or value.endswith((".yaml", ".yml", ".json"))
    if looks_like_path:
        return value
    sys.stderr.write(
        f"error: unknown {registry.kind} '{value}' for --{option}. Known {registry.kind}s: {', '.join(registry.names())}\n"
    )
    raise UnknownNameError(2)


def expand_short_names(argv: Sequence[str]) -> list[str]:
    """Rewrite ``--model NAME`` / ``--data NAME`` (and ``--opt=NAME``) to class paths."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg.partition("=")
        match = _OPTION.match(key)
        if match and eq:
            out.append(f"{key}={_resolve(_kind(key), value)}")
        elif match and i + 1 < len(args) and not args[i + 1].startswith("-"):
            out += [arg, _resolve(_kind(key), args[i + 1])]
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def _focus_help(argv: list[str]) -> list[str]:
    """``fit --model X --help`` shows X's own options (jsonargparse's ``--model.help X``), likewise ``--data``."""
    if not any(a in ("-h", "--help") for a in argv):
        return argv
    for option in ("--model", "--data"):
        for i, arg in enumerate(argv):
            key, eq, value = arg.partition("=")
            if key == option and (eq or i + 1 < len(argv)):
                target = value if eq else argv[i + 1]
                rest = [a for a in argv if a not in ("-h", "--help", arg, target)]
                sys.stderr.write(f"Options of {target} (full list: anomaly-zoo {rest[0] if rest else 'fit'} --help)\n")
                return [*rest, f"{option}.help", target]
    return argv


def _kind(key: str) -> str:
    return "model" if key == "--model" else "data"


class AnomalyZooCLI(LightningCLI):
    """The project's CLI; results go under ``results/<model>/<data>/version_N`` by default."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="fit only: run the test loop on the final weights (last epoch, no selection on test data).",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config.get("trainer")
        logger = trainer.get("logger") if trainer is not None else None
        if logger is None or logger is True:
            model = _registry_name(MODELS, config.get("model"))
            data = _registry_name(DATAMODULES, config.get("data"))
            trainer["logger"] = {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": trainer.get("default_root_dir") or "results", "name": f"{model}/{data}"},
            }

    def _parse_ckpt_path(self) -> None:
        """Take the architecture from ``--ckpt_path``'s hyper-parameters, but evaluation options from the CLI.

        LightningCLI replaces the model's arguments with the checkpoint's; a user who tests an old
        checkpoint with ``--model.pixel_metrics exact`` must get exact metrics, so those keys are restored.
        The checkpoint holds every weight, the frozen backbone's too: nothing is fetched or re-read at
        construction (offline machines can test a model trained elsewhere).
        """
        subcommand = self.config.get("subcommand")
        if not subcommand or not self.config[subcommand].get("ckpt_path"):
            return super()._parse_ckpt_path()
        init_args = getattr(self.config[subcommand].get("model"), "init_args", None)
        given = {k: init_args[k] for k in EVALUATION_OPTIONS if init_args is not None and k in init_args}
        super()._parse_ckpt_path()
        init_args = getattr(self.config[subcommand].get("model"), "init_args", None)
        if init_args is None:
            return
        given.update({k: v for k, v in WEIGHTS_FROM_CHECKPOINT.items() if k in init_args})
        for key, value in given.items():
            if key in init_args:
                init_args[key] = value

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule)


def _registry_name(registry: Registry, spec) -> str:
    class_path = getattr(spec, "class_path", None) or (spec.get("class_path") if isinstance(spec, dict) else None)
    if class_path:
        module, _, attr = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return attr
        return registry.name_of(cls) or attr
    return "unnamed"


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``anomaly-zoo`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        argv = expand_short_names(argv)
    except UnknownNameError as err:
        raise SystemExit(err.code) from None
    argv = _focus_help(argv)
    sys.argv = [sys.argv[0], *argv]  # LightningCLI warns when given args= while sys.argv has some too
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Frozen backbones are in eval mode on purpose (see FrozenModule); say so once, not per run.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # Lightning 2.6 on torch ≥ 2.10 warns about its own pytree use on every loop; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning advertises its cloud services on every run; our users run offline.
    for handler in logging.getLogger("lightning.pytorch").handlers:
        handler.addFilter(lambda record: not str(record.msg).startswith("💡 Tip"))
    description = (
        "anomaly-zoo: train and evaluate visual anomaly detectors.\n"
        f"Models (--model): {', '.join(MODELS.names())}.\n"
        f"Datasets (--data): {', '.join(DATAMODULES.names())}.\n"
        "Example: anomaly-zoo fit --model uniad --data synthetic --test_after_fit true"
    )
    try:
        AnomalyZooCLI(
            AnomalyModule,
            AnomalyDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"description": description, "formatter_class": RawDescriptionFormatter},
        )
    except Exception as err:
        # A user's data or weights are wrong, not our code: one clear line, no 60-line traceback.
        # (jsonargparse wraps errors raised while building the model, so look down the chain.)
        cause = _user_error(err)
        if cause is None or os.environ.get("ANOMALY_ZOO_TRACEBACK"):
            raise
        sys.stderr.write(f"error: {cause}\n(set ANOMALY_ZOO_TRACEBACK=1 for the full traceback)\n")
        raise SystemExit(1) from None


def _user_error(err: BaseException | None) -> BaseException | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (DatasetError, PretrainedWeightsError)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()
