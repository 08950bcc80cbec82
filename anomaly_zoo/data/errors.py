"""The exception and warning types for bad datasets: they always name the file or option at fault."""

from __future__ import annotations

import re


class DatasetError(ValueError):
    """A dataset on disk (or its configuration) is missing, incomplete or malformed."""


class EmptyMaskWarning(UserWarning):
    """Anomalous images whose ground-truth mask has no defect pixel (scored as all-normal pixels)."""


class DuplicateCategoryWarning(UserWarning):
    """A category was listed more than once in ``category``; it is used once."""


# torch re-raises a worker's exception in the main process as
# "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last): ...
#  anomaly_zoo.data.errors.DatasetError: <the message>".
_WORKER_WRAPPER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


def worker_message(err: BaseException) -> str:
    """The original message of an error raised in a DataLoader worker (``str(err)`` for any other error)."""
    text = str(err)
    if not _WORKER_WRAPPER.match(text):
        return text
    marker = f"{type(err).__name__}: "
    start = text.rfind(marker)  # the worker's own message is the last thing torch's wrapper prints
    return text[start + len(marker):].strip() if start >= 0 else text
