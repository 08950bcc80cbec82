"""``anomaly-zoo {fit,validate,test,predict}``: LightningCLI with registry short names.

``--model moeclip`` / ``--data visa`` are rewritten to the registered classes' import paths before
jsonargparse sees them, so the full LightningCLI syntax (``--model.init_args.lr``, ``--config``)
keeps working unchanged.
"""

from __future__ import annotations

# First, before Lightning: skips torchmetrics' unused optional backends and defers wandb (anomaly_zoo/startup.py).
import anomaly_zoo.startup  # noqa: F401

# isort: split
import difflib
import importlib
import inspect
import logging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from anomaly_zoo.callbacks import RandomStateCheckpoint, ResumableCheckpoint, SaveOnSignal
from anomaly_zoo.callbacks.progress_bar import progress_bar
from anomaly_zoo.callbacks.resume import NothingToResumeError, require_last_checkpoint
from anomaly_zoo.data.base import STAGE_SPLITS, AnomalyDataModule
from anomaly_zoo.data.errors import DatasetError, worker_message
from anomaly_zoo.deploy_cli import prepare_deploy_arguments, run_export
from anomaly_zoo.launcher import predict_if_exported
from anomaly_zoo.models.base import AnomalyModule
from anomaly_zoo.models.components.backbone import PretrainedWeightsError
from anomaly_zoo.models.components.checkpoint import CheckpointError, load_checkpoint
from anomaly_zoo.registry import DATAMODULES, MODELS, Registry

#: Set to 1 for Python's full traceback instead of the one-line error.
TRACEBACK_ENV = "ANOMALY_ZOO_TRACEBACK"
#: Lightning's special ``ckpt_path`` values (resolved by the Trainer, not files).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")

# Options whose value may be a registry name: --model, --data, and nested DataModules such as
# --data.train_data / --data.init_args.test_data of the cross-dataset protocol.
_OPTION = re.compile(r"^--(model|data(?:\.init_args)?\.\w+_data|data)$")


# Model options that only affect evaluation: never taken from a checkpoint's saved hyper-parameters.
EVALUATION_OPTIONS = ("pixel_metrics", "fpr_limit", "results_dir")
# Weight sources that a checkpoint makes redundant: its state dict already holds those weights.
WEIGHTS_FROM_CHECKPOINT = {"pretrained": False, "backbone_weights": None, "official_checkpoint": None}


class UnknownNameError(SystemExit):
    pass


class UsageError(ValueError):
    """Options that make no sense together (the CLI turns it into one ``error:`` line)."""


class ConfigWarning(UserWarning):
    """A configuration that runs, but probably not as the user meant."""


# ---- jsonargparse's errors, reduced to the option, its expected type and the closest valid names ------
class ConciseArgumentParser(LightningArgumentParser):
    """Prints ``error: <option>: <problem>`` and a pointer to ``--help`` instead of ~50 lines of usage."""

    def error(self, message: str, ex: Exception | None = None):
        from jsonargparse._common import debug_mode_active  # jsonargparse's own switch, kept working

        if not self.exit_on_error or debug_mode_active() or os.environ.get(TRACEBACK_ENV):
            return super().error(message, ex)  # nested parsers must raise: jsonargparse tries union members
        parser = getattr(ex, "subcommand_parser", None) or self
        sys.stderr.write(f"error: {concise_parser_error(message, parser)}\n")
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"(all options: {prog} --help)\n")
        self.exit(2)


def concise_parser_error(message: str, parser: Any = None) -> str:
    """One line for a jsonargparse error: the offending option, what it expects, the closest valid names."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    unrecognized = re.match(r"unrecognized arguments: (.*)", lines[0]) if lines else None
    if unrecognized:
        bad = [t for t in unrecognized.group(1).split() if t.startswith("-")] or unrecognized.group(1).split()[:1]
        known = [o for action in getattr(parser, "_actions", []) for o in action.option_strings]
        return f"unknown option {bad[0]}{_did_you_mean(bad[0].split('=')[0], known)}" + (
            f" (also unknown: {', '.join(bad[1:3])})" if len(bad) > 1 else "")
    path: list[str] = []
    cls_path: str | None = None
    subtypes: str | None = None
    for i, line in enumerate(lines):
        if m := re.match(r'(?:error: )?Parser key "([^"]+)":?\s*(.*)', line):
            path.append(m.group(1))
            subtypes = None
            line = m.group(2)
            if not line:
                continue
        if m := re.match(r"- Problem with given class_path '([^']+)':", line):
            cls_path = m.group(1)
            path.append("init_args")
            continue
        if m := re.match(r"Subtypes: \[(.*)\]", line):
            subtypes = m.group(1)
            continue
        option = "--" + ".".join(path)
        if m := re.match(r"Option '([^']+)' is not accepted", line):
            names = _init_parameters(cls_path)
            owner = cls_path.rpartition(".")[2] if cls_path else "this class"
            return f"unknown option {option}.{m.group(1)}: {owner} has no option '{m.group(1)}'" + (
                _did_you_mean(m.group(1), names, prefix=f"{option}.") or
                (f"; its options: {', '.join(names[:12])}" if names else ""))
        if m := re.match(r"the following arguments are required: (.*)", line):
            missing = m.group(1).split(",")[0].strip()
            missing = "--" + ".".join([*path, missing]) if path else f"--{missing.rpartition('.')[2]}"
            registry = {"--model": MODELS, "--data": DATAMODULES}.get(missing)
            return f"{missing} is required" + (f" (one of: {', '.join(registry.names())})" if registry else "")
        if m := re.match(r"File does not exist: (.*)", line):
            return f"{option}: file {m.group(1)} does not exist"
        if m := re.match(r"-?\s*Expected a (.+?)(?:\. Got value: (.*))?$", line):
            expected = _type_names(subtypes or m.group(1))
            value = m.group(2)
            if value is None:
                value = next((g.split(":", 1)[1].strip() for g in lines[i:] if g.startswith("Given value:")), "?")
            return f"{option} expects {expected}, got '{value}'"
    return lines[0] if lines else message


def _type_names(text: str) -> str:
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text).replace("NoneType", "null")
    return " | ".join(part.strip() for part in re.split(r",\s*(?![^\[]*\])", text))


def _init_parameters(cls_path: str | None) -> list[str]:
    if not cls_path:
        return []
    module, _, name = cls_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls.__init__).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return []
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _did_you_mean(word: str, candidates: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not close:
        close = [c for c in candidates if c.startswith(word) or (len(word) > 3 and word in c)][:1]
    return f"; did you mean {prefix}{close[0]}?" if close else ""


class RawDescriptionFormatter(DefaultHelpFormatter):
    """Keeps the line breaks of the description (the model and dataset lists)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in text.splitlines())


def _resolve(option: str, value: str) -> str:
    registry: Registry = MODELS if option == "model" else DATAMODULES
    if value in registry:  # the class path only: the model's package is imported when jsonargparse needs it
        return registry.class_path(value)
    for name in registry.names():  # jsonargparse's own short form: the class name (`--model UniAD`)
        if registry.class_name(name) == value:
            return registry.class_path(name)
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


def class_options_first(argv: Sequence[str]) -> list[str]:
    """Move each ``--model CLASS`` / ``--data CLASS`` (nested ``--data.train_data CLASS`` too) before the first
    option of its own group (``--data.category ...``).

    jsonargparse gives an option that comes before its class to the base class and then carries the base
    class's defaults into the subclass: ``--data.category [grid] --data synthetic`` silently trained at the
    base DataModule's 256 px, batch 32, 4 workers instead of SyntheticDataModule's defaults.
    """
    out = list(argv)
    i = 0
    while i < len(out):
        key, eq, _ = out[i].partition("=")
        if key.endswith(".class_path"):
            key = key.removesuffix(".class_path")
        elif not _OPTION.match(key):
            i += 1
            continue
        width = 1 if eq or i + 1 >= len(out) or out[i + 1].startswith("-") else 2
        groups = {key + ".", key.replace(".init_args.", ".") + "."}
        first = next((j for j in range(i) if any(out[j].startswith(g) for g in groups)), None)
        if first is not None:
            out[first:first] = [out.pop(i + width - 1 - k) for k in range(width)][::-1]
        i += width
    return out


def _focus_help(argv: list[str]) -> list[str]:
    """``fit --model X --help`` shows X's own options (jsonargparse's ``--model.help X``), likewise ``--data``.

    Any help imports every registered class first: models are imported lazily, and jsonargparse lists the
    "known subclasses" Python has seen."""
    if not any(a in ("-h", "--help") or a.endswith(".help") for a in argv):
        return argv
    MODELS.load_all()
    DATAMODULES.load_all()
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

    #: The subcommand of this run when ``main`` knows it (``predict ...``): only its parser is built, not the
    #: four full Trainer + model + data parsers (a few tenths of a second of every start). None: all of them.
    only_subcommand: str | None = None

    def subcommands(self) -> dict[str, set[str]]:
        every = LightningCLI.subcommands()
        return {self.only_subcommand: every[self.only_subcommand]} if self.only_subcommand in every else every

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="fit only: run the test loop on the final weights (last epoch, no selection on test data).",
        )
        parser.add_argument(
            "--allow_model_mismatch",
            type=bool,
            default=False,
            help="with --ckpt_path: run the checkpoint's model even when --model names another one.",
        )
        parser.add_argument(
            "--allow_image_size_mismatch",
            type=bool,
            default=False,
            help="with --ckpt_path: evaluate at --data.image_size even when the model was fitted at another size.",
        )

    def _subcommand_config(self):
        return self.config.get(self.subcommand, self.config) if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        trainer = config.get("trainer")
        if self.subcommand == "fit" and trainer is not None:
            _check_training_length(trainer, bool(config.get("test_after_fit")))
        if config.get("ckpt_path") and "weights_only" in config and config.get("weights_only") is None:
            config["weights_only"] = True  # our checkpoints hold tensors and plain data only: load them safely
        logger = trainer.get("logger") if trainer is not None else None
        if logger is None or logger is True:
            model = _registry_name(MODELS, config.get("model"))
            data = _registry_name(DATAMODULES, config.get("data"))
            init_args = {"save_dir": trainer.get("default_root_dir") or "results", "name": f"{model}/{data}"}
            if getattr(self, "resume_version", None) is not None:  # a resumed fit continues in its own version_N
                init_args["version"] = self.resume_version
            trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": init_args}

    def _parse_ckpt_path(self) -> None:
        """Take the architecture from ``--ckpt_path``'s hyper-parameters, but evaluation options from the CLI.

        The file is checked first (exists, is a Lightning checkpoint, loads with ``weights_only=True``) and
        its model class must be ``--model``'s unless ``--allow_model_mismatch``. LightningCLI then replaces
        the model's arguments with the checkpoint's; a user who tests an old checkpoint with
        ``--model.pixel_metrics exact`` must get exact metrics, so those keys are restored. The checkpoint
        holds every weight, the frozen backbone's too: nothing is fetched or re-read at construction.
        """
        self.checkpoint_data: dict[str, Any] | None = None
        self.resume_version: int | None = None
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is not None and str(ckpt_path) == "last":
            ckpt_path = self.config[subcommand]["ckpt_path"] = str(self._last_checkpoint(self.config[subcommand]))
        if subcommand == "fit" and ckpt_path:
            self.resume_version = _run_version(ckpt_path)
        if not ckpt_path or str(ckpt_path) in SPECIAL_CKPT_PATHS or str(ckpt_path).startswith("registry"):
            return super()._parse_ckpt_path()
        config = self.config[subcommand]
        checkpoint = _read_lightning_checkpoint(ckpt_path, safe=config.get("weights_only") is not False)
        self.checkpoint_data = next(
            (v for v in checkpoint.values() if isinstance(v, dict) and "anomaly_zoo_datamodule" in v), None
        )
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        del checkpoint  # the state dict is loaded again by the Trainer; do not hold two copies
        hparams.pop("_instantiator", None)
        given_model = config.get("model")
        _check_same_model(ckpt_path, hparams.get("_class_path"), getattr(given_model, "class_path", None),
                          bool(config.get("allow_model_mismatch")))
        if not hparams:
            return
        init_args = getattr(given_model, "init_args", None)
        given = {k: init_args[k] for k in EVALUATION_OPTIONS if init_args is not None and k in init_args}
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        init_args = getattr(self.config[subcommand].get("model"), "init_args", None)
        if init_args is None:
            return
        given.update({k: v for k, v in WEIGHTS_FROM_CHECKPOINT.items() if k in init_args})
        for key, value in given.items():
            if key in init_args:
                init_args[key] = value

    def _last_checkpoint(self, config) -> Path:
        """``--ckpt_path last``: the newest ``last.ckpt`` of the previous runs of this model and data."""
        trainer = config.get("trainer") or {}
        root = Path(trainer.get("default_root_dir") or "results")
        run_root = root / _registry_name(MODELS, config.get("model")) / _registry_name(DATAMODULES, config.get("data"))
        try:
            found = require_last_checkpoint(run_root)
        except NothingToResumeError as err:
            raise UsageError(str(err)) from None
        sys.stderr.write(f"--ckpt_path last: {found}\n")
        return found

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]):
        """``fit`` always keeps a resumable ``last.ckpt`` (unless the user configured checkpointing), saves the
        random state in it, and turns SIGINT / SIGTERM into a checkpoint plus the command that resumes. Every
        subcommand gets the progress bar of ``callbacks/progress_bar.py`` unless one is configured or disabled."""
        given = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            bar = progress_bar()  # Lightning's rich bar without its "0.00it/s" (callbacks/progress_bar.py)
            callbacks = [*callbacks, bar] if bar is not None else callbacks
        if self.subcommand == "fit":
            if config.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint) for c in given):
                callbacks = [*callbacks, ResumableCheckpoint()]
            callbacks = [*callbacks, RandomStateCheckpoint(), SaveOnSignal()]
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_trainer(self, **kwargs):
        """Everything that can be checked without running is checked here, before the Trainer exists
        (its start-up lines would otherwise come before the error)."""
        splits: tuple[str, ...] = ()
        if self.subcommand is not None:
            config = self._subcommand_config()
            if self.checkpoint_data and not config.get("allow_image_size_mismatch"):
                _check_same_image_size(config.get("ckpt_path"), self.checkpoint_data, self.datamodule)
            splits = STAGE_SPLITS.get(self.subcommand, ())
            if self.subcommand == "fit" and config.get("test_after_fit"):
                splits = (*splits, "test")
            _check_data_before_run(self.datamodule, self.subcommand, splits)
        trainer = super().instantiate_trainer(**kwargs)
        if splits:
            trainer.callbacks.insert(0, FileCheck(splits))  # DataModules that were not set up above
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        # A run that fails leaves nothing behind: no empty results/<model>/<data>/version_N folder.
        created = _new_directories(self.trainer)
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if self.trainer.is_global_zero:  # another rank's failure must not delete rank 0's run folder
                _remove_if_unused(created)
            raise

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule)


class FileCheck(Callback):
    """Checks the files of every split the command uses right after the DataModule's setup, before any
    other callback writes to the results folder (DataModules whose ``setup`` does not check them itself)."""

    def __init__(self, splits: tuple[str, ...]) -> None:
        self.splits = splits

    def setup(self, trainer, pl_module, stage: str) -> None:
        check = getattr(trainer.datamodule, "check_files", None)
        if callable(check):
            check(self.splits)


def _check_data_before_run(datamodule, stage: str, splits: tuple[str, ...]) -> None:
    """Set up the data and check every file of ``splits`` now: one summary of every problem, before any
    training. Skipped in DDP worker processes (``LOCAL_RANK`` set): the Trainer's own setup checks there."""
    if not isinstance(datamodule, AnomalyDataModule):
        return
    datamodule.check_splits = splits
    if os.environ.get("LOCAL_RANK") not in (None, "0") or type(datamodule).setup is not AnomalyDataModule.setup:
        return  # composite DataModules are checked by FileCheck right after the Trainer's setup
    datamodule.prepare_data()
    datamodule.setup(stage)


def _run_version(ckpt_path: str) -> int | None:
    """N of ``.../version_N/checkpoints/<file>.ckpt`` (the CLI's layout), else None."""
    parent = Path(ckpt_path).parent
    if parent.name != "checkpoints" or not parent.parent.name.startswith("version_"):
        return None
    suffix = parent.parent.name.removeprefix("version_")
    return int(suffix) if suffix.isdigit() else None


def _check_training_length(trainer, test_after_fit: bool) -> None:
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if max_epochs is not None and max_epochs < -1:
        raise UsageError(f"`--trainer.max_epochs {max_epochs}` is not a number of epochs: give 1 or more "
                         "(-1 means no limit).")
    no_steps = max_steps is None or max_steps == -1
    if test_after_fit and (max_epochs == 0 or max_steps == 0):
        option = "max_epochs" if max_epochs == 0 else "max_steps"
        raise UsageError(f"`--trainer.{option} 0` trains nothing, so `--test_after_fit true` would test an "
                         f"untrained model: give --trainer.{option} 1 or more, or evaluate a checkpoint with "
                         "`anomaly-zoo test --ckpt_path FILE`.")
    if max_epochs == -1 and no_steps and trainer.get("max_time") is None:
        warnings.warn("`--trainer.max_epochs -1` without `--trainer.max_steps` (or `--trainer.max_time`) trains "
                      "until you stop it; give a number of epochs, or a step or time limit.", ConfigWarning,
                      stacklevel=2)


def _read_lightning_checkpoint(path: str, safe: bool = True) -> dict[str, Any]:
    if safe:
        checkpoint = load_checkpoint(path, option="--ckpt_path")
    else:  # the user passed --weights_only false: they trust this file
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, ValueError) as err:
            raise CheckpointError(f"checkpoint '{path}' cannot be read ({err}); check `--ckpt_path`.") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "pytorch-lightning_version" not in checkpoint:
        raise CheckpointError(
            f"'{path}' is not a Lightning checkpoint (no 'state_dict' / 'pytorch-lightning_version'; check "
            "`--ckpt_path`). Pass the `.ckpt` files that `anomaly-zoo fit` writes under results/…/checkpoints/; "
            "an authors' released checkpoint goes to `--model.init_args.official_checkpoint` instead."
        )
    return checkpoint


def _import(class_path: str | None) -> type | None:
    if not class_path:
        return None
    module, _, attr = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return None


def _check_same_model(ckpt_path: str, saved: str | None, given: str | None, allowed: bool) -> None:
    if not saved or not given:
        return
    saved_cls, given_cls = _import(saved), _import(given)
    if saved == given or (saved_cls is not None and saved_cls is given_cls):
        return
    saved_name = _registry_name(MODELS, {"class_path": saved})
    given_name = _registry_name(MODELS, {"class_path": given})
    if allowed:
        warnings.warn(f"--ckpt_path '{ckpt_path}' is a {saved_name} checkpoint: running {saved_name}, not "
                      f"--model {given_name} (--allow_model_mismatch).", ConfigWarning, stacklevel=2)
        return
    raise UsageError(
        f"--ckpt_path '{ckpt_path}' is a {saved_name} checkpoint but --model is {given_name}: use --model "
        f"{saved_name}, or pass --allow_model_mismatch true to run the checkpoint's model anyway."
    )


def _size_text(size) -> str:
    if size is None:
        return "native size"
    h, w = size
    return f"{h}" if h == w else f"[{h}, {w}]"


def _check_same_image_size(ckpt_path: str, saved: dict[str, Any], datamodule) -> None:
    if "image_size" not in saved or datamodule is None or not hasattr(datamodule, "image_size"):
        return
    fitted = tuple(saved["image_size"]) if saved["image_size"] is not None else None
    current = tuple(datamodule.image_size) if datamodule.image_size is not None else None
    if fitted == current:
        return
    raise UsageError(
        f"--ckpt_path '{ckpt_path}' was fitted at image_size {_size_text(fitted)} but --data.image_size is "
        f"{_size_text(current)}: use --data.image_size {_size_text(fitted) if fitted else 'null'}, or pass "
        "--allow_image_size_mismatch true to evaluate at another size on purpose."
    )


def _new_directories(trainer) -> list[Path]:
    """The run's log folder and those of its parents that do not exist yet (CSV / TensorBoard loggers)."""
    logger = getattr(trainer, "logger", None)
    if logger is None or type(logger).__name__ not in ("CSVLogger", "TensorBoardLogger"):
        return []
    try:
        log_dir = Path(logger.log_dir).resolve()
    except Exception:  # never let bookkeeping break a run
        return []
    created = []
    for directory in (log_dir, *log_dir.parents):
        if directory.exists():
            break
        created.append(directory)
    return created


def _remove_if_unused(created: list[Path]) -> None:
    """Remove the folders a failed run created if they hold no checkpoint, result or logged metric."""
    if not created or not created[0].exists():
        return
    run_dir = created[0]
    useful = [p for p in run_dir.rglob("*") if p.is_file() and not _is_boilerplate(p)]
    if useful:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for directory in created[1:]:
        if directory.exists() and not any(directory.iterdir()):
            directory.rmdir()


def _is_boilerplate(path: Path) -> bool:
    if path.name in ("config.yaml", "hparams.yaml"):
        return True
    if path.name == "metrics.csv":  # a header and no logged value
        return len(path.read_text(errors="ignore").strip().splitlines()) <= 1
    return False


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
    predict_if_exported(argv)  # `predict --ckpt_path model.onnx ...`: the torch-free predictor (launcher.py)
    if argv[:1] == ["export"]:  # deployment: its own small parser (anomaly_zoo/export/cli.py)
        raise SystemExit(run_export(argv[1:]))
    try:
        argv = class_options_first(expand_short_names(argv))
    except UnknownNameError as err:
        raise SystemExit(err.code) from None
    argv = _focus_help(argv)
    try:  # deployment options and the `predict CKPT PATHS` short form (anomaly_zoo/deploy_cli.py)
        argv = prepare_deploy_arguments(argv)
    except DatasetError as err:
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(2) from None
    sys.argv = [sys.argv[0], *argv]  # LightningCLI warns when given args= while sys.argv has some too
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Frozen backbones are in eval mode on purpose (see FrozenModule); say so once, not per run.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # Lightning 2.6 on torch ≥ 2.10 warns about its own pytree use on every loop; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning advertises its cloud services on every run; our users run offline. It also announces that
    # the PredictionWriter every model returns from configure_callbacks replaces itself (test after fit).
    for handler in logging.getLogger("lightning.pytorch").handlers:
        if _quiet_lightning not in handler.filters:
            handler.addFilter(_quiet_lightning)
    warnings.formatwarning = _format_warning
    # The seed is in every results caption and config.yaml; Lightning's own line would come before any error.
    seed_logger = logging.getLogger("lightning.fabric.utilities.seed")
    if _no_seed_line not in seed_logger.filters:
        seed_logger.addFilter(_no_seed_line)
    # LightningCLI seeds every run; without --seed_everything it says so on every run, before any error.
    warnings.filterwarnings("ignore", message=r"No seed found, seed set to")
    # `test --ckpt_path` from another run's folder: Lightning notes it will not restore that run's top-k list.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    # `test` / `predict --ckpt_path`: Lightning asks for fit's checkpoint callbacks, whose state only a resumed
    # fit needs (and `fit` adds them itself).
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
    description = (
        "anomaly-zoo: train and evaluate visual anomaly detectors.\n"
        f"Models (--model): {', '.join(MODELS.names())}.\n"
        f"Datasets (--data): {', '.join(DATAMODULES.names())}.\n"
        "Example: anomaly-zoo fit --model uniad --data synthetic --test_after_fit true\n"
        "Deploy: anomaly-zoo predict --ckpt_path CKPT images/ ; anomaly-zoo export --ckpt_path CKPT --format onnx"
    )
    # `anomaly-zoo predict ...`: the one subcommand's parser. Help, a config before the subcommand, a typo: all.
    first = argv[0] if argv else None
    AnomalyZooCLI.only_subcommand = first if first in LightningCLI.subcommands() and not any(
        a in ("-h", "--help") for a in argv) else None
    try:
        AnomalyZooCLI(
            AnomalyModule,
            AnomalyDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_class=ConciseArgumentParser,
            parser_kwargs={"description": description, "formatter_class": RawDescriptionFormatter},
        )
    except Exception as err:
        # A user's data, weights or options are wrong, not our code: one clear line, no 60-line traceback.
        # (jsonargparse wraps errors raised while building the model, so look down the chain.)
        cause = _user_error(err)
        if cause is None or os.environ.get(TRACEBACK_ENV):
            raise
        sys.stderr.write(f"error: {worker_message(cause)}\n(set {TRACEBACK_ENV}=1 for the full traceback)\n")
        raise SystemExit(1) from None


#: Errors that mean the user's input is wrong (named in one line), not a bug (a traceback).
USER_ERRORS = (DatasetError, PretrainedWeightsError, CheckpointError, UsageError)


def _user_error(err: BaseException | None) -> BaseException | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _quiet_lightning(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    # Tips for cloud services; and a note on every full checkpoint save (base.on_fit_end) about an argument
    # that only matters for saving weights alone.
    if message.startswith("💡 Tip") or message == "`weights_only` was not set, defaulting to `False`.":
        return False
    return not ("will override existing callbacks passed to Trainer" in message
                and message.rstrip().endswith(": PredictionWriter"))


def _no_seed_line(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Seed set to")


_python_formatwarning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Our own warnings as one ``warning:`` line (no source location: they are about the user's input)."""
    if category.__module__.startswith("anomaly_zoo"):
        return f"warning: {message}\n"
    return _python_formatwarning(message, category, filename, lineno, line)


if __name__ == "__main__":
    main()
