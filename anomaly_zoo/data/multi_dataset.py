"""The generalist protocol (AnomalyMoE): train one model on the union of several datasets, test and report each."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.registry import DATAMODULES

if TYPE_CHECKING:  # pandas is imported where a table is built: start-up (e.g. `predict`) never needs it
    import pandas as pd

#: Separates the dataset name from the category in qualified names: ``"mvtec_ad/bottle"``.
SEPARATOR = "/"


def qualify(dataset: str, category: str) -> str:
    return f"{dataset}{SEPARATOR}{category}"


class DatasetUnion(Dataset):
    """Several datasets end to end, each sample's ``category`` qualified by its dataset's name.

    Sampling uniformly over indices (a shuffled DataLoader) is uniform over images, whatever each
    dataset's size (the AnomalyMoE protocol); ``index`` is the position in the union, so it is unique.

    Args:
        parts: ``(name, DataModule, dataset)`` triples; the DataModule is the one that built the dataset.
    """

    def __init__(self, parts: Sequence[tuple[str, AnomalyDataModule, Dataset]]) -> None:
        if not parts:
            raise DatasetError("A dataset union needs at least one dataset.")
        self.parts = list(parts)
        self.offsets: list[int] = []
        total = 0
        for _, _, dataset in self.parts:
            self.offsets.append(total)
            total += len(dataset)  # type: ignore[arg-type]
        self.length = total

    def __len__(self) -> int:
        return self.length

    @property
    def categories(self) -> list[str]:
        """Qualified categories, dataset by dataset, each in its dataset's order."""
        return [qualify(name, c) for name, _, dataset in self.parts for c in getattr(dataset, "categories", [])]

    @property
    def samples(self) -> list[Sample]:
        return [replace(s, category=qualify(name, s.category)) for name, _, dataset in self.parts
                for s in getattr(dataset, "samples", [])]

    @property
    def split(self) -> str:
        return getattr(self.parts[0][2], "split", "")

    def locate(self, index: int) -> tuple[int, int]:
        """(part, index within that part) of a union index."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a union of {self.length} samples")
        part = bisect.bisect_right(self.offsets, index) - 1
        return part, index - self.offsets[part]

    def __getitem__(self, index: int) -> dict[str, Any]:
        part, local = self.locate(index)
        name, _, dataset = self.parts[part]
        item = dataset[local]
        return {**item, "category": qualify(name, item["category"]), "index": torch.tensor(index, dtype=torch.long)}

    def map_parts(self, function: Callable[[AnomalyDataModule, Dataset], Dataset]) -> DatasetUnion:
        """The union of ``function(module, dataset)`` of every part (e.g. attaching per-dataset extras)."""
        return DatasetUnion([(name, module, function(module, dataset)) for name, module, dataset in self.parts])


@DATAMODULES.register("multi_dataset")
class MultiDataset(AnomalyDataModule):
    """Train on the union of several DataModules, each from its own root; test each, categories qualified.

    The generalist setting of AnomalyMoE (one model for MVTec AD + VisA + MVTec LOCO …). There is no tree of
    its own: each member reads its own root in its own layout. Training samples uniformly over all training
    images of all members (so larger datasets weigh more, as in the paper). Test (and validation) run over
    every member's test set; every category is named ``<dataset>/<category>`` (``mvtec_ad/bottle``,
    ``visa/candle``), so same-named categories of two datasets never share metrics, and
    :func:`split_results_by_dataset` turns the results table into one table per dataset.

    From YAML::

        data:
          class_path: anomaly_zoo.data.multi_dataset.MultiDataset
          init_args:
            batch_size: 8
            datasets:
              mvtec_ad:
                class_path: anomaly_zoo.data.mvtec_ad.MVTecAD
                init_args: {root: data/mvtec_ad, image_size: 392}
              visa:
                class_path: anomaly_zoo.data.visa.VisA
                init_args: {root: data/visa, image_size: 392}

    Args:
        datasets: the member DataModules: a mapping name → DataModule (names must not contain ``/``), or a
            list, named by their registry names (``mvtec_ad``, ``visa``); a list with two members of one
            kind needs the mapping form.
        batch_size: training batch size; default the first member's. ``eval_batch_size`` and ``num_workers``
            likewise.

    ``image_size`` and ``normalization`` must agree between members (one model sees one input format).
    Each member keeps its own ``category`` selection, ``interpolation`` and ``train_augmentations``.
    """

    DATASET_NAME = "multi-dataset"

    def __init__(
        self,
        datasets: dict[str, AnomalyDataModule] | list[AnomalyDataModule],
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        members = self._named(datasets)
        first = next(iter(members.values()))
        for attribute in ("image_size", "normalization"):
            values = {name: getattr(module, attribute) for name, module in members.items()}
            if len({repr(v) for v in values.values()}) > 1:
                listed = ", ".join(f"{name}: {value}" for name, value in values.items())
                raise DatasetError(
                    f"`{attribute}` differs between the datasets ({listed}): the model must see one input format."
                )
        super().__init__(
            root=first.root,
            category="all",
            image_size=first.image_size,
            batch_size=batch_size or first.batch_size,
            eval_batch_size=eval_batch_size or first.eval_batch_size,
            num_workers=first.num_workers if num_workers is None else num_workers,
            normalization=first.normalization,
            interpolation=first.interpolation,
        )
        self.datasets = members
        self.categories: list[str] = []

    @staticmethod
    def _named(datasets: Any) -> dict[str, AnomalyDataModule]:
        if isinstance(datasets, AnomalyDataModule):
            datasets = [datasets]
        if isinstance(datasets, dict):
            members = dict(datasets)
        elif isinstance(datasets, (list, tuple)):
            members = {}
            for module in datasets:
                name = getattr(type(module), "registry_name", type(module).__name__)
                if name in members:
                    raise DatasetError(
                        f"Two `datasets` are both '{name}': name them with the mapping form "
                        f"(datasets: {{{name}_a: …, {name}_b: …}})."
                    )
                members[name] = module
        else:
            raise DatasetError(f"`datasets` must be a list or a mapping of DataModules, got {type(datasets).__name__}.")
        if not members:
            raise DatasetError("`datasets` is empty: give at least one DataModule.")
        for name, module in members.items():
            if not isinstance(module, AnomalyDataModule):
                raise DatasetError(f"`datasets.{name}` must be an AnomalyDataModule, got {type(module).__name__}.")
            if not name or SEPARATOR in name:
                raise DatasetError(f"Dataset name '{name}' must be non-empty and contain no '{SEPARATOR}'.")
            if isinstance(module, MultiDataset):
                raise DatasetError(f"`datasets.{name}` is itself a multi_dataset: list its members directly.")
        return members

    def prepare_data(self) -> None:
        for module in self.datasets.values():
            module.prepare_data()

    def _union(self, attribute: str) -> DatasetUnion | None:
        parts = [(name, module, getattr(module, attribute)) for name, module in self.datasets.items()
                 if getattr(module, attribute, None) is not None]
        return DatasetUnion(parts) if parts else None

    def results_by_dataset(self, table: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
        """One results table per member dataset and the summary of their means (``AnomalyModule`` writes
        them beside the overall table)."""
        return split_results_by_dataset(table), dataset_summary(table)

    def setup(self, stage: str | None = None) -> None:
        for module in self.datasets.values():
            module.setup(stage)
        if stage in (None, "fit"):
            self.train_dataset = self._union("train_dataset")
            if self.train_dataset is None:
                raise DatasetError(f"No training images in any of the datasets {list(self.datasets)}.")
        if stage in (None, "fit", "validate"):
            self.val_dataset = self._union("val_dataset")
        test = self._union("test_dataset")
        if test is not None or stage in ("test", "predict"):
            self.test_dataset = test
        if self.test_dataset is None and stage in ("test", "predict"):
            raise DatasetError(f"No test images in any of the datasets {list(self.datasets)}.")
        self.categories = [qualify(name, c) for name, module in self.datasets.items()
                           for c in getattr(module, "categories", [])]


def split_results_by_dataset(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One results table per dataset from a table of qualified categories (``"visa/candle"`` rows).

    Each table has that dataset's categories (prefix removed) and its own ``"mean"`` row, computed as
    :class:`~anomaly_zoo.metrics.AnomalyMetrics` does (unweighted over categories, NaN if any is NaN).
    Rows without a dataset prefix (the overall ``"mean"``) are left out: the input table keeps them.
    """
    rows = [str(index) for index in table.index if index != "mean"]
    unqualified = [r for r in rows if SEPARATOR not in r]
    if unqualified:
        raise ValueError(f"Rows {unqualified} are not '<dataset>{SEPARATOR}<category>': not a multi_dataset table.")
    tables: dict[str, pd.DataFrame] = {}
    for dataset in dict.fromkeys(r.split(SEPARATOR, 1)[0] for r in rows):
        prefix = dataset + SEPARATOR
        part = table.loc[[r for r in rows if r.startswith(prefix)]].copy()
        part.index = [r[len(prefix):] for r in part.index]
        part.index.name = table.index.name
        part.loc["mean"] = part.mean(axis=0, skipna=False)
        tables[dataset] = part
    return tables


def dataset_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Each dataset's mean row, plus the overall ``"mean"`` (over all categories): the generalist summary."""
    import pandas as pd
    summary = pd.DataFrame({name: part.loc["mean"] for name, part in split_results_by_dataset(table).items()}).T
    summary.loc["mean"] = table.loc["mean"] if "mean" in table.index else table.mean(axis=0, skipna=False)
    summary.index.name = "dataset"
    return summary
