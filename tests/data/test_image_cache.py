"""The decoded-image cache: bit-identical batches for every DataModule, invalidated by any change of the files or
settings, one valid cache when two processes build it at once, clear errors and nothing half-written."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_zoo.data import image_cache
from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.image_cache import ImageCacheWarning, attach_image_cache, resolve_cache_mode
from anomaly_zoo.data.transforms import build_transform
from anomaly_zoo.registry import DATAMODULES

from . import layouts as L

FOLDER_DIRS = {"normal_dir": "train/good", "abnormal_dir": "test/Ungood/img", "mask_dir": "test/Ungood/label"}
#: registry name → (tree writer, extra arguments). Every DataModule that reads image files from a tree.
TREES = {
    "mvtec_ad": (L.make_mvtec, {}),
    "mpdd": (L.make_mvtec, {}),
    "dtd_synthetic": (lambda r: L.make_mvtec(r, categories=("Woven_001",), defects={"bad": 2}), {}),
    "btad": (L.make_btad, {}),
    "visa": (L.make_visa, {}),
    "mvtec_loco": (L.make_loco_with_config, {"category": "pushpins"}),
    "folder": (L.make_folder, {"category": "brain", **FOLDER_DIRS}),
    "mvtec_ad2": (L.make_mvtec_ad2, {}),
    "mvtec_3d": (L.make_mvtec_3d, {}),
    "real_iad": (L.make_real_iad, {"resolution": 256}),
    "bmad": (L.make_bmad, {}),
    "polyp": (L.make_polyp, {}),
    "isic": (L.make_isic, {}),
    "rsdd": (L.make_rsdd, {}),
    "headct": (L.make_headct, {}),
    "ped2": (L.make_ped2, {}),
    "cifar10": (L.make_cifar10, {"category": "cat", "per_class": True}),
}
SPLITS = ("train", "val", "test")


def _datamodule(name: str, root: Path, **kwargs):
    writer, extra = TREES[name]
    extra = dict(extra)
    if extra.pop("per_class", False):
        root = writer(root, 2, 2)
    else:
        root = writer(root)
    dm = DATAMODULES[name](root=str(root), image_size=None, num_workers=0, batch_size=2, **extra, **kwargs)
    return dm


def _transforms(dataset) -> list:
    if hasattr(dataset, "parts"):
        return [t for _, _, part in dataset.parts for t in _transforms(part)]
    return [dataset.transform]


def _batches(dm, split: str, mode: str) -> list[dict]:
    dm.cache = mode
    loader = getattr(dm, f"{split}_dataloader")()
    dataset = getattr(dm, f"{split}_dataset")
    if dataset is None:
        return []
    for transform in _transforms(dataset):
        transform.set_random_seed(0)  # the same augmentation draws in both passes
    torch.manual_seed(0)
    return list(loader)


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


#: Zero-shot test sets (no training split) and sets without masks.
TEST_ONLY = ("headct", "isic", "polyp", "rsdd")
NO_MASKS = ("cifar10", "headct")


@pytest.mark.parametrize("name", sorted(TREES))
def test_cached_batches_are_bit_identical_for_every_datamodule(name, tmp_path):
    dm = _datamodule(name, tmp_path / "data")
    dm.image_size = (12, 12)  # resized: the cache must hold the resized pixels (square: rot90 keeps the shape)
    dm.train_augmentations = ["hflip", "rot90", "color_jitter"]  # still random per item on the cached image
    dm.setup("test" if name in TEST_ONLY else None)
    compared = []
    for split in SPLITS:
        if getattr(dm, f"{split}_dataset", None) is None:
            continue
        mode = "memory" if split == "val" else "disk"
        plain, cached = _batches(dm, split, "off"), _batches(dm, split, mode)
        dataset = getattr(dm, f"{split}_dataset")
        parts = [p for _, _, p in dataset.parts] if hasattr(dataset, "parts") else [dataset]
        assert all(p.image_cache is not None for p in parts), (split, mode)
        _assert_same(plain, cached)
        compared.append(split)
        if split == "test" and name not in NO_MASKS:
            assert any(b["mask"].any() for b in cached)  # masks went through the cache too
    assert "test" in compared and (name in TEST_ONLY or "train" in compared)


def test_synthetic_data_cached_equals_uncached_at_native_size(tmp_path):
    dm = DATAMODULES["synthetic"](root=str(tmp_path / "syn"), category=["pill", "assembly"], generated_size=32,
                                  num_train=4, num_val=4, num_test=4, batch_size=3)
    dm.setup(None)
    for split in SPLITS:
        _assert_same(_batches(dm, split, "off"), _batches(dm, split, "disk"))


# ---- the key ------------------------------------------------------------------------------------------------
def _dataset(root: Path, n: int = 4, size=(8, 8), interpolation: str = "bilinear", split: str = "train"):
    """``n`` 20×24 images (odd ones with a mask), written once under ``root``."""
    samples = []
    for i in range(n):
        image, mask = root / f"{i}.png", root / f"{i}_mask.png"
        if not image.exists():
            L.write_image(image, size=(20, 24), seed=i)
            if i % 2:
                L.write_mask(mask, L.box(i, (20, 24)), size=(20, 24))
        masks = (str(mask),) if i % 2 else ()
        samples.append(Sample(str(image), int(bool(masks)), "c", masks, "d" if masks else "good"))
    return AnomalyDataset(samples, build_transform("none"), size, interpolation, split=split)


def _entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in (cache_dir / "decoded").iterdir() if p.is_dir())


def test_size_interpolation_or_one_file_changes_the_key(tmp_path):
    root = tmp_path / "imgs"
    first = attach_image_cache(_dataset(root), "disk").image_cache
    cache_dir = Path(os.environ["ANOMALY_ZOO_CACHE"])
    before = set(_entries(cache_dir))
    assert attach_image_cache(_dataset(root), "disk").image_cache.directory == first.directory  # reused
    assert attach_image_cache(_dataset(root, size=(8, 6)), "disk").image_cache.directory != first.directory
    assert attach_image_cache(_dataset(root, interpolation="bicubic"), "disk").image_cache.directory != first.directory
    # one file rewritten (new pixels, new mtime): a new cache serving the new pixels
    L.write_image(root / "2.png", size=(20, 24), seed=99)
    dataset = _dataset(root)
    fresh = attach_image_cache(dataset, "disk").image_cache
    assert fresh.directory != first.directory
    dataset.image_cache = None
    expected = dataset.decoded(2)
    assert np.array_equal(fresh.item(2)[0], expected[0])
    assert len(set(_entries(cache_dir)) - before) >= 3


def test_key_depends_on_file_metadata_and_reader_code(tmp_path):
    dataset = _dataset(tmp_path / "imgs")
    code = image_cache.code_fingerprint(image_cache._decoding_functions(dataset))
    key = image_cache.cache_key(dataset.samples, (8, 8), "bilinear", code)
    assert key == image_cache.cache_key(dataset.samples, (8, 8), "bilinear", code)
    assert key != image_cache.cache_key(dataset.samples, (8, 8), "bilinear", code + "x")
    path = dataset.samples[1].mask_paths[0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # a mask touched
    assert key != image_cache.cache_key(dataset.samples, (8, 8), "bilinear", code)


def test_auto_caches_train_and_val_only_and_env_replaces_auto(monkeypatch):
    assert [resolve_cache_mode("auto", s) for s in ("train", "val", "test")] == ["disk", "disk", "off"]
    assert resolve_cache_mode("memory", "test") == "memory"
    monkeypatch.setenv(image_cache.MODE_ENV, "off")
    assert resolve_cache_mode("auto", "train") == "off" and resolve_cache_mode("disk", "train") == "disk"
    with pytest.raises(DatasetError, match="`cache` must be one of"):
        resolve_cache_mode("ram", "train")


# ---- concurrency, errors, nothing half-written ---------------------------------------------------------------
def _build_in_child(root: str, cache: str, queue) -> None:
    os.environ["ANOMALY_ZOO_CACHE"] = cache
    dataset = _dataset(Path(root), n=12, size=(16, 16))
    slow = dataset.decoded

    def decoded(i):  # slow enough that both processes are inside the build at the same time
        time.sleep(0.02)
        return slow(i)

    dataset.decoded = decoded
    cache_obj = attach_image_cache(dataset, "disk").image_cache
    queue.put(str(cache_obj.directory))


def test_two_processes_building_at_once_make_one_valid_cache(tmp_path):
    _dataset(tmp_path / "imgs", n=12, size=(16, 16))  # write the files once, before either process stats them
    cache = tmp_path / "cache"
    ctx = mp.get_context("fork")  # two real processes (as DDP ranks), without re-importing torch in each
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path / "imgs"), str(cache), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    dirs = {queue.get(timeout=5), queue.get(timeout=5)}
    assert len(dirs) == 1
    entries = list((cache / "decoded").iterdir())
    assert [p.name for p in entries if p.is_dir()] == [Path(next(iter(dirs))).name]  # no temporary copy left
    meta = json.loads((Path(next(iter(dirs))) / "meta.json").read_text())
    assert meta["items"] == 12
    reference = _dataset(tmp_path / "imgs", n=12, size=(16, 16))
    built = image_cache.DecodedImageCache.open(Path(next(iter(dirs))))
    for i in range(12):
        image, mask = reference.decoded(i)
        got_image, got_mask = built.item(i)
        assert np.array_equal(image, got_image) and np.array_equal(mask, got_mask)


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALY_ZOO_CACHE", str(tmp_path / "cache"))
    dataset = _dataset(tmp_path / "imgs")
    Path(dataset.samples[3].image_path).write_bytes(b"not a png")  # corrupt: fails half-way through the build
    with pytest.raises(DatasetError, match="3.png"):
        attach_image_cache(dataset, "disk")
    assert [p for p in (tmp_path / "cache" / "decoded").iterdir() if p.suffix != ".lock"] == []


def test_unwritable_directory_is_an_error_for_disk_and_a_warning_for_auto(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ANOMALY_ZOO_CACHE", str(blocker / "below"))  # below a file: cannot be created
    with pytest.raises(DatasetError, match="not writable.*ANOMALY_ZOO_CACHE"):
        attach_image_cache(_dataset(tmp_path / "imgs"), "disk")
    with pytest.warns(ImageCacheWarning, match="not writable"):
        dataset = attach_image_cache(_dataset(tmp_path / "imgs"), "auto")
    assert dataset.image_cache is None and dataset[0]["image"].shape == (3, 8, 8)


def test_full_disk_is_an_error_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALY_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda _: type("U", (), {"free": 100})())
    messages: list[str] = []
    with pytest.raises(DatasetError, match=r"Not enough space.*needs \d+ B, 100 B are free"):
        image_cache.build_on_disk(_dataset(tmp_path / "imgs").samples, (8, 8), "bilinear",
                                  lambda i: (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), bool)), "code",
                                  log=messages.append)
    assert "needs" in messages[0] and "free" in messages[0]  # the space needed is printed first
    assert [p for p in (tmp_path / "cache" / "decoded").iterdir() if p.suffix != ".lock"] == []


def test_workers_map_the_files_instead_of_receiving_a_copy(tmp_path):
    import pickle

    dataset = attach_image_cache(_dataset(tmp_path / "imgs", size=(64, 64)), "disk")
    blob = pickle.dumps(dataset)
    assert len(blob) < dataset.image_cache.nbytes  # the pixels are not in the pickle
    clone = pickle.loads(blob)
    assert torch.equal(clone[1]["image"], dataset[1]["image"]) and torch.equal(clone[1]["mask"], dataset[1]["mask"])


def test_every_datamodule_takes_the_cache_option():
    import inspect

    composite = {"cross_dataset", "multi_dataset", "images"}  # their members' loaders / predict only (auto = off)
    missing = [n for n in DATAMODULES.names()
               if n not in composite and "cache" not in inspect.signature(DATAMODULES[n].__init__).parameters]
    assert missing == []
    with pytest.raises(DatasetError, match="`cache` must be one of"):
        DATAMODULES["mvtec_ad"](root=".", cache="ram")
