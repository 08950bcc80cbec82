"""The cached prepare step that computes AnomalyMoE's component masks and attaches them to a DataModule.

:func:`attach_component_masks` wraps the datasets a stage uses so that every sample also carries
``component_masks`` (uint8, (K, H, W), aligned with ``image``) and ``component_valid`` (bool, (K,)).
Masks are computed (with a progress bar) only when the cache is missing or stale, and read lazily per
sample afterwards. Works for plain, ``cross_dataset`` and ``multi_dataset`` DataModules.

Cache layout, under ``$ANOMALY_ZOO_CACHE`` (default ``~/.cache/anomaly_zoo``)::

    anomalymoe_masks/<dataset>/<category>/<key>/centres.npz        k-means centres + kept clusters
    anomalymoe_masks/<dataset>/<category>/<key>/masks-<list>.npz   one bit-packed (K, S, S) member per image

``<key>`` hashes the dataset (class and root), the category, the training images (path, mtime, size)
and every setting (feature model, its weights, k, size, coreset, CRF backend and parameters, seed);
``<list>`` hashes the images of that file. Every file is written to a temporary name and renamed.

``predict`` on images without a training set (``anomaly-zoo predict --ckpt_path CKPT imgs/``) uses the centres
and kept clusters the fit stored in the checkpoint (:meth:`MaskPreparer.stored_centres`,
:func:`attach_stored_component_masks`); their masks are cached under ``anomalymoe_masks/stored/<key>/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.cross_dataset import CrossDataset
from anomaly_zoo.data.dataset import Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import read_image
from anomaly_zoo.data.synthetic import cache_dir as default_cache_dir
from anomaly_zoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from anomaly_zoo.models.anomalymoe.component_masks import (
    DinoPatchFeatures,
    MaskSettings,
    binarize,
    fit_centres,
    foreground_clusters,
    image_posteriors,
)
from anomaly_zoo.models.anomalymoe.crf import CRFParams, pydensecrf_available, resolve_backend

#: Bump when the pipeline changes in a way that changes the masks.
PIPELINE_VERSION = 1
#: Which of a DataModule's datasets each stage uses.
STAGE_DATASETS = {
    "fit": ("train_dataset", "val_dataset"),
    "validate": ("val_dataset",),
    "test": ("test_dataset",),
    "predict": ("test_dataset",),
    None: ("train_dataset", "val_dataset", "test_dataset"),
}


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fingerprint(paths: Sequence[str]) -> list[tuple[str, int, int]]:
    """(path, mtime_ns, size) of every file: a changed, added or removed image changes the key."""
    out = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as err:
            raise DatasetError(f"Image '{path}' cannot be read for the component masks: {err}") from err
        out.append((str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size))
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "_"


def _atomic_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _geometric_transforms(transform: Any) -> list[str]:
    steps = getattr(transform, "transforms", [])
    return [type(t).__name__ for t in steps if isinstance(t, A.DualTransform)]


class MaskPreparer:
    """Computes and caches the masks of (dataset, category, image list) groups; one feature model, loaded lazily."""

    def __init__(
        self,
        settings: MaskSettings,
        feature_model: str,
        pretrained: bool,
        weights: str | None,
        feature_model_kwargs: dict | None,
        cache_dir: str | Path | None,
        device: str | torch.device | None,
        batch_size: int,
        progress: bool,
        weights_option: str,
    ) -> None:
        self.settings = settings
        self.feature_model = feature_model
        self.pretrained = pretrained
        self.weights = weights
        self.feature_model_kwargs = dict(feature_model_kwargs or {})
        self.root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.root = self.root / "anomalymoe_masks"
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.progress = progress
        self.weights_option = weights_option
        self._extractor: DinoPatchFeatures | None = None
        #: Images whose features were computed by this preparer (tests check that a warm cache computes none).
        self.images_computed = 0
        #: (dataset name, category) → (centres, kept clusters) of every group this preparer wrapped.
        self.fitted: dict[tuple[str, str], tuple[torch.Tensor, np.ndarray]] = {}

    # ---- keys -----------------------------------------------------------------------------------
    def settings_key(self) -> dict:
        weights = None
        if self.weights is not None:
            weights = _fingerprint([str(Path(self.weights).expanduser())])[0] if Path(self.weights).expanduser().is_file() \
                else str(self.weights)
        return {
            "version": PIPELINE_VERSION,
            "settings": asdict(self.settings),
            "feature_model": self.feature_model,
            "feature_model_kwargs": self.feature_model_kwargs,
            "pretrained": self.pretrained,
            "weights": weights,
        }

    def group_dir(self, module: AnomalyDataModule, category: str, train: list[tuple[str, int, int]]) -> Path:
        identity = {"dataset": type(module).__qualname__, "root": str(Path(module.root).resolve()),
                    "category": category, "train": train, **self.settings_key()}
        name = getattr(type(module), "registry_name", type(module).__name__)
        return self.root / _slug(name) / _slug(category) / _hash(identity)

    # ---- computation ------------------------------------------------------------------------------
    @property
    def extractor(self) -> DinoPatchFeatures:
        if self._extractor is None:
            # A random-init model (tests, demos) is drawn from `seed`, so the cache key determines its weights.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.settings.seed)
                self._extractor = DinoPatchFeatures(
                    self.feature_model, self.pretrained, self.weights, self.feature_model_kwargs, self.weights_option
                ).to(self.device)
        return self._extractor

    def _load(self, path: str) -> np.ndarray:
        size = self.settings.image_size
        image = Image.fromarray(read_image(path)).resize((size, size), Image.BILINEAR)  # the authors' Resize
        return np.array(image)

    def _features(self, images: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.inference_mode():
            features = self.extractor(((batch - mean) / std).to(self.device)).float().cpu()
        self.images_computed += len(images)
        return features

    def _batches(self, paths: Sequence[str], description: str):
        """Yields (images, features) per batch, with a progress bar over images."""
        bar = tqdm(total=len(paths), desc=description, unit="img", disable=not self.progress, leave=False)
        try:
            for start in range(0, len(paths), self.batch_size):
                images = [self._load(p) for p in paths[start : start + self.batch_size]]
                yield images, self._features(images)
                bar.update(len(images))
        finally:
            bar.close()

    def centres(self, directory: Path, train_paths: list[str], label: str) -> tuple[torch.Tensor, np.ndarray]:
        """k-means centres and kept clusters of a category (cached in ``directory/centres.npz``)."""
        path = directory / "centres.npz"
        if path.is_file():
            with np.load(path) as stored:
                return torch.from_numpy(stored["centres"]), stored["keep"].astype(bool)
        features = []
        first: tuple[np.ndarray, torch.Tensor] | None = None
        for images, batch in self._batches(train_paths, f"component clusters {label}"):
            features.extend(batch)
            if first is None:
                first = (images[0], batch[0])
        centres = fit_centres(features, self.settings)
        assert first is not None
        keep = foreground_clusters(image_posteriors(first[0], first[1], centres, self.settings))
        tmp = _atomic_path(path)
        with open(tmp, "wb") as handle:
            np.savez(handle, centres=centres.numpy(), keep=keep)
        os.replace(tmp, path)
        return centres, keep

    def masks(self, directory: Path, image_paths: list[str], centres: torch.Tensor, keep: np.ndarray,
              label: str) -> Path:
        """Bit-packed masks of ``image_paths`` (member ``str(i)`` = image i), computed unless cached."""
        path = directory / f"masks-{_hash(_fingerprint(image_paths))}.npz"
        if path.is_file():
            return path
        tmp = _atomic_path(path)
        index = 0
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for images, batch in self._batches(image_paths, f"component masks {label}"):
                for image, features in zip(images, batch):
                    masks = binarize(image_posteriors(image, features, centres, self.settings))
                    masks[~keep] = False
                    with archive.open(f"{index}.npy", "w") as member:
                        np.lib.format.write_array(member, np.packbits(masks.reshape(-1)))
                    index += 1
            with archive.open("shape.npy", "w") as member:
                np.lib.format.write_array(member, np.array(masks.shape if index else (len(keep), 0, 0)))
        os.replace(tmp, path)
        return path

    # ---- datasets -----------------------------------------------------------------------------------
    def wrap(self, module: AnomalyDataModule, dataset: Dataset) -> ComponentMaskDataset:
        """``dataset`` (samples of ``module``) with the masks of its images attached."""
        if isinstance(dataset, ComponentMaskDataset):  # attached before: look the files up again (cheap if cached)
            dataset = dataset.base
        samples: list[Sample] | None = getattr(dataset, "samples", None)
        if samples is None:
            raise DatasetError(
                f"Component masks need image files: {type(dataset).__name__} has no `samples` (use an anomaly_zoo "
                "DataModule)."
            )
        geometric = _geometric_transforms(getattr(dataset, "transform", None))
        if geometric:
            raise DatasetError(
                f"Component masks are computed on the un-augmented image, so random geometric augmentations "
                f"({', '.join(geometric)}) would misalign them: remove them from `train_augmentations`."
            )
        locations: list[tuple[str, str] | None] = [None] * len(samples)
        for category in dict.fromkeys(s.category for s in samples):
            train = [s.image_path for s in module.make_samples(category, "train")]
            if not train:
                raise DatasetError(
                    f"Component masks of {module.DATASET_NAME} category '{category}' are clustered on its training "
                    f"images, and none were found under '{module.root}'."
                )
            directory = self.group_dir(module, category, _fingerprint(train))
            name = getattr(type(module), "registry_name", module.DATASET_NAME)
            centres, keep = self.centres(directory, train, f"{name}/{category}")
            self.fitted[(str(name), str(category))] = (centres, keep)
            members = [i for i, s in enumerate(samples) if s.category == category]
            split = getattr(dataset, "split", "")
            path = self.masks(directory, [samples[i].image_path for i in members], centres, keep,
                              f"{name}/{category} {split}".strip())
            for position, index in enumerate(members):
                locations[index] = (str(path), str(position))
        return ComponentMaskDataset(dataset, locations, self.settings.num_clusters, self.settings_key())

    # ---- masks from a checkpoint's centres (predict without training images) -------------------------
    def stored_centres(self) -> dict[str, Any]:
        """What :func:`attach_stored_component_masks` needs, in checkpoint-safe types (tensors, str, lists)."""
        groups = [{"dataset": name, "category": category, "centres": centres.clone(),
                   "keep": torch.as_tensor(np.asarray(keep, dtype=bool))}
                  for (name, category), (centres, keep) in self.fitted.items()]
        return {"settings": self.settings_key(), "groups": groups}

    def wrap_stored(self, module: AnomalyDataModule, dataset: Dataset, groups: list[dict]) -> ComponentMaskDataset:
        """``dataset`` with masks from stored centres; each item's ``category`` becomes the matched stored one."""
        if isinstance(dataset, ComponentMaskDataset):
            dataset = dataset.base
        samples: list[Sample] | None = getattr(dataset, "samples", None)
        if samples is None:
            raise DatasetError(f"Component masks need image files: {type(dataset).__name__} has no `samples`.")
        name = str(getattr(type(module), "registry_name", module.DATASET_NAME))
        chosen = [stored_group_for(s, name, groups) for s in samples]
        locations: list[tuple[str, str] | None] = [None] * len(samples)
        for g in dict.fromkeys(chosen):
            group = groups[g]
            centres = group["centres"].float().cpu()
            keep = group["keep"].cpu().numpy().astype(bool)
            identity = {**self.settings_key(), "stored": group["dataset"], "category": group["category"],
                        "centres": hashlib.sha256(centres.numpy().tobytes()).hexdigest(), "keep": keep.tolist()}
            directory = self.root / "stored" / _hash(identity)
            members = [i for i, c in enumerate(chosen) if c == g]
            path = self.masks(directory, [samples[i].image_path for i in members], centres, keep,
                              f"{group['dataset']}/{group['category']} (stored centres)")
            for position, index in enumerate(members):
                locations[index] = (str(path), str(position))
        return ComponentMaskDataset(dataset, locations, self.settings.num_clusters, self.settings_key(),
                                    categories=[str(groups[g]["category"]) for g in chosen])


def stored_group_for(sample: Sample, dataset_name: str, groups: list[dict]) -> int:
    """Index of the stored (dataset, category) whose centres segment ``sample``.

    The sample's category if it is a stored one (ties between datasets: the one named like the DataModule);
    else the only stored group; else the nearest folder of the image named after a stored category.
    """
    by_category: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        by_category.setdefault(str(group["category"]), []).append(i)

    def pick(category: str) -> int | None:
        found = by_category.get(category, [])
        if len(found) > 1:
            found = [i for i in found if groups[i]["dataset"] == dataset_name] or found[:0]
        return found[0] if len(found) == 1 else None

    choice = pick(str(sample.category))
    if choice is None and len(groups) == 1:
        choice = 0
    if choice is None:
        for folder in reversed(Path(sample.image_path).parent.parts):
            choice = pick(folder)
            if choice is not None:
                break
    if choice is None:
        names = ", ".join(sorted(by_category))
        raise DatasetError(
            f"AnomalyMoE cannot tell which trained category '{sample.image_path}' (category '{sample.category}') "
            f"belongs to, for its component masks: pass --data.category NAME, one of {names} (or put the "
            "images in a folder named after it)."
        )
    return choice


class ComponentMaskDataset(Dataset):
    """A dataset whose items also carry ``component_masks`` (uint8 (K, H, W)) and ``component_valid`` (bool (K,)).

    The masks are nearest-resized from the prepare size to the item's image size (the whole image is
    resized in both, so they align pixel for pixel). ``component_valid[k]`` is False for a cluster the
    background filter dropped and for one that is empty in this image. Reads the cache lazily, one open
    archive per process (DataLoader workers open their own).
    """

    def __init__(self, base: Dataset, locations: list[tuple[str, str] | None], num_clusters: int, key: dict,
                 categories: list[str] | None = None) -> None:
        self.base = base
        self.locations = locations
        self.num_clusters = num_clusters
        self.key = key
        #: Per item, the category to report instead of the dataset's (masks from a checkpoint's centres).
        self.categories_override = categories
        self._archives: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # samples, categories, split, transform … of the wrapped dataset (base's loop reads `categories`).
        if name in ("base", "locations", "_archives", "num_clusters", "key", "categories_override"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_archives": {}}  # open archives do not cross process boundaries

    def component_masks(self, index: int) -> np.ndarray:
        """bool (K, S, S) masks of sample ``index`` at the prepare size."""
        location = self.locations[index]
        if location is None:
            raise DatasetError(f"Sample {index} has no component masks (its category was not prepared).")
        path, member = location
        archive = self._archives.get(path)
        if archive is None:
            archive = self._archives[path] = np.load(path)
        shape = tuple(int(v) for v in archive["shape"])
        bits = np.unpackbits(archive[member], count=int(np.prod(shape)))
        return bits.reshape(shape).astype(bool)

    def __getitem__(self, index: int) -> dict:
        item = self.base[index]
        height, width = item["image"].shape[-2:]
        masks = self.component_masks(index)
        if masks.shape[1:] != (height, width):
            # NEAREST_EXACT samples pixel centres like PIL's nearest, the datasets' own mask resize.
            stacked = np.ascontiguousarray(masks.transpose(1, 2, 0).astype(np.uint8))
            stacked = cv2.resize(stacked, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
            masks = stacked.reshape(height, width, -1).transpose(2, 0, 1)
        out = np.zeros((self.num_clusters, height, width), dtype=np.uint8)
        out[: len(masks)] = masks[: self.num_clusters]
        component_masks = torch.from_numpy(out)
        if self.categories_override is not None:
            item = {**item, "category": self.categories_override[index]}
        return {**item, "component_masks": component_masks, "component_valid": component_masks.flatten(1).any(1).bool()}


def _wrap_datasets(datamodule: AnomalyDataModule, stage: str | None,
                   wrap: Callable[[AnomalyDataModule, Dataset], Dataset]) -> int:
    """Replaces the stage's datasets of ``datamodule`` by wrapped ones; returns how many were wrapped."""
    if stage not in STAGE_DATASETS:
        raise ValueError(f"Unknown stage '{stage}'; choose one of {[s for s in STAGE_DATASETS if s]}.")
    count = 0
    for attribute in STAGE_DATASETS[stage]:
        dataset = getattr(datamodule, attribute, None)
        if dataset is None:
            continue
        if hasattr(dataset, "map_parts"):  # multi_dataset's union: each part from its own DataModule
            wrapped = dataset.map_parts(wrap)
        elif isinstance(datamodule, CrossDataset):
            source = datamodule.test_data if attribute == "test_dataset" else datamodule.train_data
            wrapped = wrap(source, dataset)
        else:
            wrapped = wrap(datamodule, dataset)
        setattr(datamodule, attribute, wrapped)
        count += 1
    return count


def attach_component_masks(datamodule: AnomalyDataModule, stage: str | None, **settings: Any) -> MaskPreparer:
    """Give every sample of ``stage``'s datasets ``component_masks`` and ``component_valid`` (module docstring).

    Call after ``datamodule.setup(stage)`` (Lightning does that before ``LightningModule.setup``), e.g. from
    the model's ``setup``. ``"fit"`` wraps the train (and val) datasets, ``"test"``/``"predict"`` the test
    dataset, ``"validate"`` the val dataset. Masks are computed only when the cache is missing or stale.
    ``settings`` are :func:`make_preparer`'s. Returns the preparer: its :meth:`~MaskPreparer.stored_centres`
    go into the checkpoint.
    """
    if not isinstance(datamodule, AnomalyDataModule):
        raise TypeError(f"attach_component_masks needs an AnomalyDataModule, got {type(datamodule).__name__}.")
    preparer = make_preparer(**settings)
    _wrap_datasets(datamodule, stage, preparer.wrap)
    return preparer


def make_preparer(
    *,
    num_clusters: int = 5,
    feature_model: str = "vit_small_patch16_224.dino",
    pretrained: bool = True,
    weights: str | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    feature_model_kwargs: dict | None = None,
    image_size: int = 448,
    coreset_ratio: float = 0.01,
    crf_backend: str = "auto",
    crf: CRFParams | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    weights_option: str = "component_mask_weights",
) -> MaskPreparer:
    """The :class:`MaskPreparer` that computes, caches and serves the component masks.

    Args:
        num_clusters: k of the per-category k-means (the size K of ``component_masks``).
        feature_model: timm name of the DINO v1 ViT (patch tokens of the last block).
        pretrained: load its weights from timm's cache (no network: PretrainedWeightsError naming ``weights``).
        weights: a local weights file instead (the option the error names is ``weights_option``).
        cache_dir: cache root; default ``$ANOMALY_ZOO_CACHE`` or ``~/.cache/anomaly_zoo``.
        device: where the features are computed; default CUDA when available.
        feature_model_kwargs: extra ``timm.create_model`` arguments (tiny random ViTs in tests).
        image_size: side of the square the masks are computed at (the authors: 448).
        coreset_ratio, crf_backend, crf, seed: the pipeline's settings (:mod:`.component_masks`, :mod:`.crf`).
        batch_size: images per feature-extraction batch.
        progress: show a tqdm progress bar while computing.
    """
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be ≥ 1, got {num_clusters}.")
    settings = MaskSettings(
        num_clusters=num_clusters, image_size=image_size, coreset_ratio=coreset_ratio, seed=seed,
        crf=crf or CRFParams(), crf_backend=resolve_backend(crf_backend),
    )
    return MaskPreparer(settings, feature_model, pretrained, weights, feature_model_kwargs, cache_dir, device,
                        batch_size, progress, weights_option)


def attach_stored_component_masks(datamodule: AnomalyDataModule, stage: str | None, stored: dict[str, Any],
                                  **settings: Any) -> MaskPreparer:
    """Like :func:`attach_component_masks`, but from centres stored by a fit (:meth:`MaskPreparer.stored_centres`):
    no training images needed. ``settings`` are ``attach_component_masks``' keyword arguments (the fit's)."""
    if not isinstance(datamodule, AnomalyDataModule):
        raise TypeError(f"attach_stored_component_masks needs an AnomalyDataModule, got {type(datamodule).__name__}.")
    groups = list(stored.get("groups") or [])
    if not groups:
        raise DatasetError("The checkpoint stores no component-mask centres (its fit prepared no masks).")
    fitted_backend = ((stored.get("settings") or {}).get("settings") or {}).get("crf_backend")
    if settings.get("crf_backend", "auto") == "auto" and fitted_backend in ("torch", "pydensecrf") and (
            fitted_backend == "torch" or pydensecrf_available()):
        # `auto` means pydensecrf wherever it installs: a checkpoint fitted where it did not (or did) must get
        # its masks from the same CRF, not from whatever this machine has (the two are not bit-identical).
        settings = {**settings, "crf_backend": fitted_backend}
    preparer = make_preparer(**settings)
    if stored.get("settings") is not None and _hash(stored["settings"]) != _hash(preparer.settings_key()):
        warnings.warn("AnomalyMoE: the component-mask settings differ from those the stored centres were fitted "
                      "with (mask_settings / feature-model weights); the masks may not match training.", stacklevel=2)
    _wrap_datasets(datamodule, stage, lambda module, dataset: preparer.wrap_stored(module, dataset, groups))
    return preparer
