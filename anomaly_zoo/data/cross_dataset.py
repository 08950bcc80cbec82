"""Cross-dataset (zero-shot) protocol: fit on one DataModule's data, test on another's."""

from __future__ import annotations

from torch.utils.data import DataLoader

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import AnomalyDataset
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.transforms import build_transform
from anomaly_zoo.registry import DATAMODULES


@DATAMODULES.register("cross_dataset")
class CrossDataset(AnomalyDataModule):
    """Train on ``train_data``, test on ``test_data`` — two complete DataModules, each with its own root.

    The zero-shot protocol of MoECLIP / AnomalyCLIP: fit once on an auxiliary dataset (e.g. VisA's
    labelled test split), then test on unseen datasets (MVTec AD, BTAD, medical sets) and the reverse.
    There is no directory tree of its own: two roots, each in its own DataModule's layout::

        ├── <train_data.root>/   e.g. VisA:     <cat>/Data/…, split_csv/1cls.csv  → train_dataset, val_dataset
        └── <test_data.root>/    e.g. MVTec AD: <cat>/{train,test,ground_truth}   → test_dataset

    From YAML (or the same as ``--data.train_data visa --data.train_data.root …`` on the CLI)::

        data:
          class_path: anomaly_zoo.data.cross_dataset.CrossDataset
          init_args:
            train_split: test
            train_data:
              class_path: anomaly_zoo.data.visa.VisA
              init_args: {root: data/visa, image_size: 518}
            test_data:
              class_path: anomaly_zoo.data.mvtec_ad.MVTecAD
              init_args: {root: data/mvtec_ad, image_size: 518}

    Training uses ``train_data``'s batch size, workers and ``train_augmentations``; evaluation uses
    ``test_data``'s. ``image_size`` and ``normalization`` must agree between the two (a model sees one
    input format); ``image_size`` / ``categories`` of this module are those of the test data.

    Args:
        train_data: the DataModule whose images the model is fitted on.
        test_data: the DataModule the model is tested (and predicts) on.
        train_split: which split of ``train_data`` to fit on: ``"train"`` (normal images only; the
            unsupervised setting) or ``"test"`` (its labelled normal + anomalous test images, with masks;
            the zero-shot setting of MoECLIP, trained on VisA's test split). Validation uses the
            ``val`` split of ``train_data`` when it has one.
        allow_seen_categories: a zero-shot run refuses test categories that also appear in training; ``true``
            allows them (then it is no longer zero-shot).
    """

    DATASET_NAME = "cross-dataset"

    def __init__(
        self,
        train_data: AnomalyDataModule,
        test_data: AnomalyDataModule,
        train_split: str = "train",
        allow_seen_categories: bool = False,
    ) -> None:
        for option, module in (("train_data", train_data), ("test_data", test_data)):
            if not isinstance(module, AnomalyDataModule):
                raise DatasetError(f"`{option}` must be an AnomalyDataModule, got {type(module).__name__}.")
        if train_split not in ("train", "test"):
            raise DatasetError(f"`train_split` must be 'train' or 'test', got '{train_split}'.")
        for attribute in ("image_size", "normalization"):
            fit_value, test_value = getattr(train_data, attribute), getattr(test_data, attribute)
            if fit_value != test_value:
                raise DatasetError(
                    f"`train_data.{attribute}` ({fit_value}) differs from `test_data.{attribute}` ({test_value}): "
                    "the model must see the same input format when fitted and tested."
                )
        super().__init__(
            root=test_data.root,
            category=test_data.category,
            image_size=test_data.image_size,
            batch_size=train_data.batch_size,
            eval_batch_size=test_data.eval_batch_size,
            num_workers=test_data.num_workers,
            normalization=test_data.normalization,
            interpolation=test_data.interpolation,
            train_augmentations=train_data.train_augmentations,
        )
        self.train_data = train_data
        self.test_data = test_data
        self.train_split = train_split
        self.allow_seen_categories = allow_seen_categories
        self.train_categories: list[str] = []
        self.categories: list[str] = []

    # ---- setup: each side resolves its own root and categories ----------------------------------
    def _fit_dataset(self, categories: list[str]) -> AnomalyDataset:
        data = self.train_data
        samples = [s for c in categories for s in data.make_samples(c, self.train_split)]
        if not samples:
            raise DatasetError(
                f"No '{self.train_split}' images in `train_data` ({data.DATASET_NAME}, {categories}) under '{data.root}'."
            )
        transform = build_transform(data.normalization, data.train_augmentations)
        return AnomalyDataset(samples, transform, data.image_size, data.interpolation, split="train")

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate"):
            self.train_categories = self.train_data.resolve_categories()
            if stage != "validate":
                self.train_dataset = self._fit_dataset(self.train_categories)
            self.val_dataset = self.train_data.build_dataset(self.train_categories, "val")
        if stage in (None, "fit", "test", "predict") or self.test_dataset is None:
            # Built at fit time too, so a wrong test root fails before training rather than after it.
            self.test_data.setup("test")
            self.test_dataset = self.test_data.test_dataset
            self.categories = self.test_data.categories
        seen = [c for c in self.categories if c in set(self.train_categories)]
        if seen and not self.allow_seen_categories:
            raise DatasetError(
                f"Test categories {seen} also appear in training (`train_data`): not a zero-shot test. "
                "Choose other categories, or set `allow_seen_categories: true`."
            )

    # ---- loaders: each side's own batch size and workers ---------------------------------------
    def train_dataloader(self) -> DataLoader:
        return self.train_data._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self.train_data._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self.test_data._loader(self.test_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_data._loader(self.test_dataset, train=False)
