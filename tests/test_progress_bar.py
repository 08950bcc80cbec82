"""The CLI's progress bar prints no speed until one is known (Lightning's says "0.00it/s" for one batch)."""

from __future__ import annotations

import builtins
from types import SimpleNamespace

import pytest

from anomaly_zoo.callbacks.progress_bar import progress_bar


def test_the_speed_column_is_empty_until_a_speed_is_known():
    pytest.importorskip("rich")  # optional for Lightning; without it the next test's branch runs
    from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn

    bar = progress_bar()
    columns = bar.configure_columns(trainer=None)
    speed = [c for c in columns if isinstance(c, ProcessingSpeedColumn)]
    assert len(speed) == 1 and type(speed[0]) is not ProcessingSpeedColumn
    assert speed[0].render(SimpleNamespace(speed=None)).plain == ""
    assert speed[0].render(SimpleNamespace(speed=2.5)).plain == "2.50it/s"
    assert ProcessingSpeedColumn(style="").render(SimpleNamespace(speed=None)).plain == "0.00it/s"  # Lightning's


def test_without_rich_lightning_keeps_its_own_bar(monkeypatch):
    real_import = builtins.__import__

    def no_rich(name, *args, **kwargs):
        if name == "rich" or name.startswith("rich."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rich)
    assert progress_bar() is None
