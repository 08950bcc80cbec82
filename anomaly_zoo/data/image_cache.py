"""The decoded-image cache: every image decoded and resized once, then read from a memory-mapped array.

Decoding a 1024² PNG costs ~85 ms and resizing it ~13 ms on one core, and an epoch repeats that for every
file; UniAD's training step on a GPU is a few ms per image. So each image is decoded and resized once to
the training resolution, exactly as :meth:`AnomalyDataset.decoded` does it (the cache calls that very
method), and stored as uint8 — masks as packed bits. Random augmentations, normalisation and the tensor
conversion still run per item on the cached pixels, so every batch is bit-identical to the uncached one.

Modes (``cache`` of every DataModule; ``$ANOMALY_ZOO_IMAGE_CACHE`` replaces ``auto`` everywhere):

- ``disk``: files under ``<cache>/decoded/<key>/`` (``<cache>`` = ``$ANOMALY_ZOO_CACHE``, default
  ``~/.cache/anomaly_zoo``), memory-mapped by every DataLoader worker and every DDP rank of a node: one copy
  in the page cache, never one per process. One process builds it under a file lock while the others wait;
  it is written to a temporary sibling and renamed in one step, so nobody ever reads half of it.
- ``memory``: the same arrays in this process's RAM (workers forked from it share them; DDP ranks each
  hold their own). For read-only cache directories or one-off runs.
- ``auto`` (default): ``disk`` for the train and val splits (read every epoch), off for test and predict
  (read once: a cache would only add a write). A cache directory that cannot be written turns into a
  warning and an uncached run; with ``disk`` it is an error.
- ``off``: decode every item from its file.

The key is a hash of every image and mask file (path, size, modification time), the image size, the
interpolation and the source code of the decoding functions, so a changed file, setting or reader never
serves stale pixels; a new key simply builds a new cache (old ones can be deleted at any time).
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image

from anomaly_zoo.data.errors import DatasetError

__all__ = ["CACHE_MODES", "CacheStorageError", "DecodedImageCache", "ImageCacheWarning", "attach_image_cache", "resolve_cache_mode"]

CACHE_MODES = ("auto", "off", "memory", "disk")
#: Replaces ``auto`` for every DataModule (e.g. ``ANOMALY_ZOO_IMAGE_CACHE=off`` in a CI job).
MODE_ENV = "ANOMALY_ZOO_IMAGE_CACHE"
#: Splits ``auto`` caches: those read once per epoch. Test and predict read each image once.
AUTO_SPLITS = ("train", "val")
#: Bump when the on-disk format changes.
FORMAT_VERSION = 1
_META = "meta.json"

#: (H, W, 3) uint8 image and (H, W) bool mask of one item, before augmentation.
Decoded = tuple[np.ndarray, np.ndarray]


class ImageCacheWarning(UserWarning):
    """The decoded-image cache could not be used (``auto``): the run continues uncached."""


class CacheStorageError(DatasetError):
    """The cache directory is not writable or has no room (with ``auto`` a warning, not an error)."""


def cache_root() -> Path:
    """``<cache>/decoded`` with ``<cache>`` as for the synthetic dataset (``$ANOMALY_ZOO_CACHE``, ...)."""
    from anomaly_zoo.data.synthetic import cache_dir  # the one definition of the cache directory

    return cache_dir() / "decoded"


def resolve_cache_mode(mode: str, split: str) -> str:
    """``auto`` → ``disk`` for train/val, ``off`` otherwise (``$ANOMALY_ZOO_IMAGE_CACHE`` replaces ``auto``)."""
    if mode not in CACHE_MODES:
        raise DatasetError(f"`cache` must be one of {', '.join(CACHE_MODES)}, got {mode!r}.")
    if mode == "auto" and os.environ.get(MODE_ENV):
        mode = os.environ[MODE_ENV]
        if mode not in CACHE_MODES:
            raise DatasetError(f"${MODE_ENV} must be one of {', '.join(CACHE_MODES)}, got {mode!r}.")
    if mode == "auto":
        return "disk" if split in AUTO_SPLITS else "off"
    return mode


# ---- the key ---------------------------------------------------------------------------------------
def _stat(path: str) -> list:
    try:
        st = os.stat(path)
    except FileNotFoundError as err:
        raise DatasetError(f"File not found: '{path}'.") from err
    return [path, st.st_size, st.st_mtime_ns]


def code_fingerprint(functions: Sequence[Callable]) -> str:
    """A hash of the source of the functions that decode an item: a changed reader invalidates the cache."""
    digest = hashlib.sha256()
    for function in functions:
        try:
            digest.update(inspect.getsource(function).encode())
        except (OSError, TypeError):
            digest.update(repr(function).encode())
    digest.update(Image.__version__.encode())  # another Pillow may resize differently
    return digest.hexdigest()


def cache_key(samples: Sequence[Any], image_size: tuple[int, int] | None, interpolation: str, code: str) -> str:
    """Hash of every file (path, size, mtime), the image size, the interpolation and the decoding code."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, list(image_size) if image_size else None, interpolation, code]).encode())
    for sample in samples:
        files = [_stat(sample.image_path)] + [_stat(p) for p in sample.mask_paths]
        digest.update(json.dumps(files).encode())
    return digest.hexdigest()[:24]


# ---- the cache itself --------------------------------------------------------------------------------
def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class DecodedImageCache:
    """Decoded images (uint8, flat) and masks (packed bits, flat) with a per-item index.

    ``index[i] = (image_offset, h, w, mask_offset)``; ``mask_offset = -1`` for an item without masks (an
    all-zero mask, as :func:`merge_masks` gives). Pickling keeps only the directory (disk mode), so a
    DataLoader worker started with ``spawn`` maps the same files instead of receiving a copy.
    """

    def __init__(self, index: np.ndarray, images: np.ndarray, masks: np.ndarray, directory: Path | None = None):
        self.index = index
        self._images: np.ndarray | None = images
        self._masks: np.ndarray | None = masks
        self.directory = directory

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        """Bytes held (on disk for ``disk``, in RAM for ``memory``)."""
        return int(self.images.nbytes + self.masks.nbytes + self.index.nbytes)

    @classmethod
    def open(cls, directory: Path) -> DecodedImageCache:
        index = np.load(directory / "index.npy")
        return cls(index, *_map(directory), directory=directory)

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images, self._masks = _map(self.directory)  # type: ignore[arg-type]
        return self._images

    @property
    def masks(self) -> np.ndarray:
        if self._masks is None:
            self._images, self._masks = _map(self.directory)  # type: ignore[arg-type]
        return self._masks

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.directory is not None:  # workers re-map the files: no copy through the pickle
            state["_images"] = state["_masks"] = None
        return state

    def item(self, i: int) -> Decoded:
        """Item ``i``: a fresh (H, W, 3) uint8 image and (H, W) bool mask (copies: augmentations may write)."""
        offset, h, w, mask_offset = (int(v) for v in self.index[i])
        image = np.array(self.images[offset:offset + h * w * 3].reshape(h, w, 3))
        if mask_offset < 0:
            return image, np.zeros((h, w), dtype=bool)
        n = (h * w + 7) // 8
        mask = np.unpackbits(self.masks[mask_offset:mask_offset + n], count=h * w).reshape(h, w).astype(bool)
        return image, mask


def _map(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    def one(name: str) -> np.ndarray:
        path = directory / name
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=np.uint8)  # np.memmap cannot map an empty file
        return np.memmap(path, dtype=np.uint8, mode="r")

    return one("images.u8"), one("masks.u8")


def plan_layout(
    samples: Sequence[Any], image_size: tuple[int, int] | None
) -> tuple[np.ndarray, int, int]:
    """The index (offsets and sizes) and the total image and mask bytes, before anything is decoded.

    At native size the sizes come from the file headers (no pixel is decoded).
    """
    index = np.zeros((len(samples), 4), dtype=np.int64)
    image_bytes = mask_bytes = 0
    for i, sample in enumerate(samples):
        if image_size is not None:
            h, w = image_size
        else:
            try:
                with Image.open(sample.image_path) as image:
                    w, h = image.size
            except OSError as err:
                raise DatasetError(f"Cannot read image '{sample.image_path}' (corrupt or not an image): {err}") from err
        index[i] = (image_bytes, h, w, mask_bytes if sample.mask_paths else -1)
        image_bytes += h * w * 3
        if sample.mask_paths:
            mask_bytes += (h * w + 7) // 8
    return index, image_bytes, mask_bytes


def _fill(
    index: np.ndarray,
    images: np.ndarray,
    masks: np.ndarray,
    decode: Callable[[int], Decoded],
    threads: int,
    description: str,
) -> None:
    """Decode every item into the flat arrays; threads, since PIL releases the GIL while decoding and resizing."""
    from tqdm.auto import tqdm

    def one(i: int) -> None:
        offset, h, w, mask_offset = (int(v) for v in index[i])
        image, mask = decode(i)
        if image.shape != (h, w, 3) or image.dtype != np.uint8:
            raise DatasetError(f"Item {i} decoded to {image.shape} {image.dtype}, expected ({h}, {w}, 3) uint8.")
        images[offset:offset + h * w * 3] = image.reshape(-1)
        if mask_offset >= 0:
            packed = np.packbits(np.asarray(mask, dtype=bool).reshape(-1))
            masks[mask_offset:mask_offset + packed.size] = packed

    with tqdm(total=len(index), desc=description, unit="img", file=sys.stderr, disable=None, leave=False) as bar:
        if threads <= 1:
            for i in range(len(index)):
                one(i)
                bar.update()
        else:
            with ThreadPoolExecutor(threads) as pool:
                for _ in pool.map(one, range(len(index))):
                    bar.update()


def build_in_memory(samples: Sequence[Any], image_size, decode: Callable[[int], Decoded], threads: int = 1):
    index, image_bytes, mask_bytes = plan_layout(samples, image_size)
    images, masks = np.empty(image_bytes, dtype=np.uint8), np.empty(mask_bytes, dtype=np.uint8)
    _fill(index, images, masks, decode, threads, f"Decoding {len(samples)} images into memory")
    return DecodedImageCache(index, images, masks)


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CacheStorageError(
            f"The image cache directory '{directory}' is not writable ({err.strerror or err}): set "
            "$ANOMALY_ZOO_CACHE to a writable directory, or use `cache: memory` or `cache: off`."
        ) from err


def _full_error(directory: Path, needed: int, free: int) -> DatasetError:
    return CacheStorageError(
        f"Not enough space for the image cache in '{directory}': it needs {_human(needed)}, {_human(free)} are "
        "free. Free some space, set $ANOMALY_ZOO_CACHE to another disk, or use `cache: memory` or `cache: off`."
    )


def build_on_disk(
    samples: Sequence[Any],
    image_size: tuple[int, int] | None,
    interpolation: str,
    decode: Callable[[int], Decoded],
    code: str,
    directory: Path | None = None,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
) -> DecodedImageCache:
    """Open the cache of these samples, building it first if no process has (one builder, the rest wait)."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    directory = directory or cache_root()
    key = cache_key(samples, image_size, interpolation, code)
    final = directory / key
    if (final / _META).is_file():
        return DecodedImageCache.open(final)
    _check_writable(directory)
    lock = FileLock(str(directory / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"Waiting for another process to finish the image cache '{final}' ...")
        lock.acquire()
    try:
        if (final / _META).is_file():  # built while we waited
            return DecodedImageCache.open(final)
        for stale in directory.glob(f".{key}.tmp-*"):  # only the lock holder writes: these are from killed runs
            shutil.rmtree(stale, ignore_errors=True)
        index, image_bytes, mask_bytes = plan_layout(samples, image_size)
        needed = image_bytes + mask_bytes + index.nbytes
        free = shutil.disk_usage(directory).free
        size = f"{image_size[0]}x{image_size[1]}" if image_size else "native size"
        log(f"Image cache: decoding {len(samples)} images once ({size}, {interpolation}) into '{final}': "
            f"needs {_human(needed)} on disk, {_human(free)} free.")
        if needed > free:
            raise _full_error(directory, needed, free)
        tmp = directory / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            images = _create(tmp / "images.u8", image_bytes)
            masks = _create(tmp / "masks.u8", mask_bytes)
            start = time.perf_counter()
            _fill(index, images, masks, decode, threads, "Decoding images into the cache")
            for array in (images, masks):
                if isinstance(array, np.memmap):
                    array.flush()
            del images, masks
            np.save(tmp / "index.npy", index)
            meta = {"format": FORMAT_VERSION, "items": len(samples), "image_size": list(image_size) if image_size else None,
                    "interpolation": interpolation, "bytes": needed, "seconds": round(time.perf_counter() - start, 2)}
            (tmp / _META).write_text(json.dumps(meta, indent=1) + "\n")  # last: a complete cache has it
            os.rename(tmp, final)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _full_error(directory, needed, shutil.disk_usage(directory).free) from err
            raise CacheStorageError(f"Cannot write the image cache '{final}': {err}") from err
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is ever left behind
        return DecodedImageCache.open(final)
    finally:
        lock.release()


def _create(path: Path, nbytes: int) -> np.ndarray:
    if nbytes == 0:
        path.write_bytes(b"")
        return np.zeros(0, dtype=np.uint8)
    with open(path, "wb") as f:
        # Reserve the blocks now where the filesystem can, so a full disk fails here and not mid-way.
        try:
            os.posix_fallocate(f.fileno(), 0, nbytes)
        except (AttributeError, OSError) as err:
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            f.truncate(nbytes)
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=(nbytes,))


# ---- attaching a cache to a dataset -----------------------------------------------------------------
def decode_threads() -> int:
    """Threads that decode while a cache is built: the cores this process may use (at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def attach_image_cache(dataset: Any, mode: str) -> Any:
    """Give ``dataset`` (an :class:`AnomalyDataset`, or a union with ``parts``) its decoded-image cache.

    Idempotent: a dataset that already has a cache for the same settings keeps it. Returns ``dataset``.
    """
    if dataset is None:
        return dataset
    if hasattr(dataset, "parts"):  # DatasetUnion: each member dataset has its own files
        for _, _, part in dataset.parts:
            attach_image_cache(part, mode)
        return dataset
    if "base" in vars(dataset):  # a wrapper (AnomalyMoE's ComponentMaskDataset): its base reads the files
        attach_image_cache(dataset.base, mode)
        return dataset
    if not hasattr(dataset, "decoded") or not hasattr(dataset, "samples"):
        return dataset
    resolved = resolve_cache_mode(mode, getattr(dataset, "split", ""))
    current = getattr(dataset, "image_cache", None)
    if resolved == "off":
        dataset.image_cache = None
        return dataset
    if current is not None and getattr(dataset, "_image_cache_mode", None) == resolved:
        return dataset
    dataset.image_cache = None  # decode from the files while building

    def decode(i: int) -> Decoded:
        return dataset.decoded(i)

    threads = decode_threads()
    if resolved == "memory":
        cache = build_in_memory(dataset.samples, dataset.image_size, decode, threads)
    else:
        code = code_fingerprint(_decoding_functions(dataset))
        try:
            cache = build_on_disk(dataset.samples, dataset.image_size, dataset.interpolation, decode, code,
                                  threads=threads)
        except CacheStorageError as err:
            if mode != "auto":
                raise
            warnings.warn(f"{err} Continuing without the image cache.", ImageCacheWarning, stacklevel=2)
            return dataset
    dataset.image_cache = cache
    dataset._image_cache_mode = resolved
    return dataset


def _decoding_functions(dataset: Any) -> list[Callable]:
    """The code an item's pixels depend on: the dataset's ``decoded`` and the readers it calls."""
    from anomaly_zoo.data import io, resize, transforms

    return [type(dataset).decoded, io._open, io.read_image, io.read_mask, io.merge_masks, transforms.resize_pair,
            resize.resize_image]
