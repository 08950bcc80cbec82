"""Safe checkpoint loading for every model's converter and for the CLI: tensors and plain data only.

``torch.load(weights_only=True)`` refuses every Python object outside a small set of safe types, so a
file cannot run code when it is loaded. The authors' checkpoints sometimes pickle a little more (a
config as ``easydict.EasyDict``, a metric as a numpy scalar); each converter lists exactly those
names in an allow-list, mapped to a harmless stand-in. Anything else is an error naming the file and
the objects it wanted: there is never a fallback to unrestricted unpickling.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_zoo.export.runtime import not_a_checkpoint


class CheckpointError(ValueError):
    """A checkpoint file is missing, cannot be read safely, or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


def _numpy_globals() -> dict[str, Any]:
    """numpy scalars (e.g. a ``best_metric`` of ``np.float64``): rebuilt from raw bytes and a dtype, no code."""
    core = getattr(np, "_core", None) or np.core
    names: dict[str, Any] = {
        "numpy.core.multiarray.scalar": core.multiarray.scalar,  # numpy 1.x pickles
        "numpy._core.multiarray.scalar": core.multiarray.scalar,  # numpy 2.x pickles
        "numpy.dtype": np.dtype,
    }
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(getattr(np, "dtypes", None), name):
            names[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return names


#: Plain data found in released research checkpoints; converters pass ``allowed={**NUMPY_SCALARS, ...}``.
NUMPY_SCALARS: dict[str, Any] = _numpy_globals()
#: ``easydict.EasyDict`` configs (UniAD and many other research codebases) read as ``OrderedDict``s: torch's
#: safe unpickler fills only exact dict types, and an OrderedDict also keeps EasyDict's attribute state.
EASYDICT: dict[str, Any] = {"easydict.EasyDict": OrderedDict}


def load_checkpoint(
    path: str | Path, *, option: str, what: str = "checkpoint", allowed: Mapping[str, Any] | None = None
) -> Any:
    """The object in ``path``, loaded with ``weights_only=True`` onto the CPU.

    Args:
        path: the file.
        option: the command-line option that gave it (named in every error, e.g. ``--ckpt_path``).
        what: what the file should be, for messages ("UniAD official checkpoint").
        allowed: ``{"module.Name": stand_in}``: the only extra globals the file may reference, each
            replaced by ``stand_in`` (a class or function that is safe to call).

    Raises:
        CheckpointNotFoundError: the file does not exist.
        CheckpointError: not a PyTorch file, or it references objects outside the allow-list.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointNotFoundError(f"{what} '{path}' {state} (check `{option}`).")
    exported = not_a_checkpoint(path, option)
    if exported:
        raise CheckpointError(exported)
    safe = [(obj, name) for name, obj in (allowed or {}).items()]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path, allowed or {})
        if not unsafe and "Unsupported global" not in str(err):
            raise CheckpointError(f"{what} '{path}' is not a PyTorch checkpoint ({_last_line(err)}); "
                                  f"check `{option}`.") from None
        names = ", ".join(unsafe) if unsafe else _unsupported_global(err)
        raise CheckpointError(
            f"{what} '{path}' references Python objects that are not on the allow-list of safe types "
            f"({names}); it is not loaded, since unpickling them could run arbitrary code. If you trust the "
            "file, re-save only its tensors (torch.save(obj['state_dict'], 'weights.pt') after a "
            f"torch.load(..., weights_only=False) you run yourself) and pass that file to `{option}`."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{what} '{path}' cannot be read as a PyTorch checkpoint ({type(err).__name__}: {_first_line(err)}); "
            f"check `{option}`."
        ) from None


def state_dict_of(obj: Any, path: str | Path, *, option: str, what: str = "checkpoint",
                  keys: tuple[str, ...] = ("state_dict", "model", "module")) -> dict[str, torch.Tensor]:
    """The tensor dict in a loaded checkpoint: ``obj`` itself or ``obj[key]`` for the first of ``keys`` present."""
    if isinstance(obj, Mapping):
        for key in keys:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what} '{path}' holds no state dict of tensors (check `{option}`).")
    return dict(obj)


def _unsafe_globals(path: Path, allowed: Mapping[str, Any]) -> list[str] | None:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (non-zip) files cannot be scanned; the load error is reported instead
        return None
    return [n for n in names if n not in allowed]


def _unsupported_global(err: BaseException) -> str:
    for line in str(err).splitlines():
        if "Unsupported global" in line:
            return line.split("GLOBAL", 1)[-1].split(" was not", 1)[0].strip()
    return _first_line(err)


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(err).__name__


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
