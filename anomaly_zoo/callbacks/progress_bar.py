"""The CLI's progress bar: Lightning's rich bar, without a "0.00it/s" while the speed is not known.

Lightning's speed column prints ``0.00it/s`` until rich has measured a speed, so a one-batch ``predict``
(one image) ends at "0.00it/s", which reads as stuck. This column stays empty until a speed is known.
Without rich installed, Lightning's tqdm bar is used as before (``progress_bar`` returns None).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback


def progress_bar() -> Callback | None:
    """The rich progress bar with a known-speed-only column; None when rich is not installed."""
    try:
        from lightning.pytorch.callbacks import RichProgressBar
        from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn
        from rich.text import Text
    except ImportError:  # rich is optional for Lightning: its tqdm bar then
        return None

    class KnownSpeedColumn(ProcessingSpeedColumn):
        def render(self, task: Any) -> Text:
            return Text("") if task.speed is None else super().render(task)

    class AnomalyZooProgressBar(RichProgressBar):
        def configure_columns(self, trainer: Any) -> list:
            return [KnownSpeedColumn(style=self.theme.processing_speed) if isinstance(c, ProcessingSpeedColumn)
                    else c for c in super().configure_columns(trainer)]

    return AnomalyZooProgressBar()
