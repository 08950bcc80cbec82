"""Base of datasets that are one set, not a folder of categories (HeadCT, Br35H, ISIC, UCSD Ped2, …)."""

from __future__ import annotations

from anomaly_zoo.data.base import AnomalyDataModule


class SingleSetDataModule(AnomalyDataModule):
    """``root`` is the set itself; its one category is ``CATEGORIES[0]`` (``category="all"`` selects it).

    Zero-shot test sets without a training split return ``[]`` for ``"train"``: ``test`` and ``predict``
    work, ``fit`` fails with the base's "no training images" error.
    """

    def available_categories(self) -> list[str]:
        return [self.CATEGORIES[0]]
