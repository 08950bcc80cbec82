"""The built-in synthetic dataset: determinism, layout, masks, the batch contract and its cache."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.synthetic import (
    MARKER,
    SyntheticDataModule,
    SyntheticSpec,
    default_root,
    ensure_generated,
)
from anomaly_zoo.data.synthetic_shapes import CATEGORIES, DEFECTS, LOGICAL_DEFECTS, render, sample_rng
from anomaly_zoo.registry import DATAMODULES

SMALL = SyntheticSpec(generated_size=64, num_train=4, num_val=6, num_test=8, seed=0)


def small_kwargs(spec: SyntheticSpec = SMALL) -> dict:
    return dict(
        generated_size=spec.generated_size,
        num_train=spec.num_train,
        num_val=spec.num_val,
        num_test=spec.num_test,
        seed=spec.seed,
    )


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "small"
    assert ensure_generated(root, SMALL)
    return root


@pytest.fixture()
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANOMALY_ZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---- generation ---------------------------------------------------------------------------------------


def test_registered_under_its_short_name():
    assert DATAMODULES["synthetic"] is SyntheticDataModule


def test_same_seed_gives_identical_bytes(small_root: Path, tmp_path: Path):
    again = tmp_path / "again"
    assert ensure_generated(again, SMALL)
    first, second = tree_digest(small_root), tree_digest(again)
    assert len(first) > 100
    assert first == second


def test_different_seed_gives_different_images(small_root: Path, tmp_path: Path):
    other = tmp_path / "other"
    ensure_generated(other, SyntheticSpec(**{**small_kwargs(), "seed": 1}))
    images = [p.relative_to(small_root) for p in small_root.rglob("*.png") if "ground_truth" not in str(p)]
    assert images
    for rel in images:
        assert (other / rel).is_file()
        a, b = np.asarray(Image.open(small_root / rel)), np.asarray(Image.open(other / rel))
        assert not np.array_equal(a, b), rel


def test_layout_is_mvtec_like(small_root: Path):
    assert (small_root / MARKER).is_file()
    assert sorted(p.name for p in small_root.iterdir() if p.is_dir()) == sorted(CATEGORIES)
    for category in CATEGORIES:
        base = small_root / category
        assert len(list((base / "train" / "good").glob("*.png"))) == SMALL.num_train
        assert sorted(p.name for p in (base / "train").iterdir()) == ["good"]
        for image_dir, gt_dir in (("validation", "ground_truth_validation"), ("test", "ground_truth")):
            assert {p.name for p in (base / image_dir).iterdir()} == {"good", *DEFECTS[category]}
            for defect in DEFECTS[category]:
                for image in (base / image_dir / defect).glob("*.png"):
                    assert (base / gt_dir / defect / f"{image.stem}_mask.png").is_file()
        assert (base / "test" / "good" / "000.png").is_file()
        assert (base / "ground_truth" / DEFECTS[category][0] / "000_mask.png").is_file()


def test_counts_and_labels_per_split(small_root: Path):
    dm = SyntheticDataModule(root=str(small_root), image_size=None, **small_kwargs())
    dm.setup()
    assert not dm.generated
    for dataset, split, total in (
        (dm.train_dataset, "train", SMALL.num_train),
        (dm.val_dataset, "val", SMALL.num_val),
        (dm.test_dataset, "test", SMALL.num_test),
    ):
        assert dataset is not None and dataset.split == split
        for category in CATEGORIES:
            samples = [s for s in dataset.samples if s.category == category]
            labels = [s.label for s in samples]
            assert len(samples) == total
            if split == "train":
                assert labels == [0] * total
                continue
            assert labels.count(1) == total // 2 and labels.count(0) == total - total // 2
            kinds = sorted(s.defect_type for s in samples if s.label == 1)
            expected = sorted(SMALL.plan(category, split)[total - total // 2 :])
            assert kinds == expected
            assert all(s.defect_type == "good" and not s.mask_paths for s in samples if s.label == 0)


def test_masks_are_nonempty_exactly_for_anomalies(small_root: Path):
    dm = SyntheticDataModule(root=str(small_root), image_size=None, normalization="none", **small_kwargs())
    dm.setup("validate")
    for dataset in (dm.val_dataset, dm.test_dataset):
        for i in range(len(dataset)):
            item = dataset[i]
            mask = item["mask"]
            assert mask.shape == (1, SMALL.generated_size, SMALL.generated_size)
            area = int(mask.sum())
            if item["label"] == 1:
                # Inside the frame, not touching it, and far from covering the whole image.
                assert 0 < area < 0.25 * mask.numel(), item["path"]
                assert mask[0, [0, -1], :].sum() == 0 and mask[0, :, [0, -1]].sum() == 0, item["path"]
            else:
                assert area == 0, item["path"]


@pytest.mark.parametrize("category", CATEGORIES)
def test_mask_covers_exactly_what_the_defect_changed(category: str):
    for defect in DEFECTS[category]:
        for index in range(6):
            rng = sample_rng(7, category, "test", index)
            sample = render(category, defect, 96, rng)
            clean_only = render(category, "good", 96, sample_rng(7, category, "test", index))
            # The defect was painted on the very image a normal sample of the same draw would be.
            np.testing.assert_array_equal(sample.clean, clean_only.image)
            changed = (sample.image.astype(int) - sample.clean.astype(int) != 0).any(axis=2)
            assert sample.mask.any()
            assert not (changed & ~sample.mask).any(), f"{category}/{defect}: change outside the mask"
            assert changed[sample.mask].mean() > 0.8, f"{category}/{defect}: mask larger than the change"
            contrast = np.abs(sample.image.astype(float) - sample.clean)[sample.mask].mean()
            assert contrast > 20, f"{category}/{defect}: defect barely visible ({contrast:.1f} grey levels)"


def test_logical_defects_keep_the_surface_intact():
    # A missing or misplaced part changes only the part's place(s): the rest of the board is untouched.
    for defect in LOGICAL_DEFECTS:
        sample = render("assembly", defect, 128, sample_rng(0, "assembly", "test", 3))
        changed = (sample.image != sample.clean).any(axis=2)
        assert changed.any() and not (changed & ~sample.mask).any()
        assert 0.01 < sample.mask.mean() < 0.15


def test_files_on_disk_are_the_rendered_samples(small_root: Path):
    for category in ("stripes", "assembly"):
        plan = SMALL.plan(category, "test")
        index = plan.index(DEFECTS[category][0])
        sample = render(
            category, plan[index], SMALL.generated_size, sample_rng(SMALL.seed, category, "test", index)
        )
        base = small_root / category
        image = np.asarray(Image.open(base / "test" / plan[index] / "000.png"))
        mask = np.asarray(Image.open(base / "ground_truth" / plan[index] / "000_mask.png")) > 0
        np.testing.assert_array_equal(image, sample.image)
        np.testing.assert_array_equal(mask, sample.mask)


def test_normal_images_vary(small_root: Path):
    for category in CATEGORIES:
        images = [
            np.asarray(Image.open(p), dtype=float)
            for p in sorted((small_root / category / "train" / "good").iterdir())
        ]
        for a, b in zip(images, images[1:]):
            assert np.abs(a - b).mean() > 3.0, category


def test_bad_parameters_fail_clearly():
    with pytest.raises(ValueError, match="generated_size"):
        SyntheticDataModule(generated_size=16)
    with pytest.raises(ValueError, match="seed"):
        SyntheticDataModule(seed=-1)
    with pytest.raises(ValueError, match="num_train"):
        SyntheticDataModule(num_train=0)


# ---- reading through the DataModule -----------------------------------------------------------------


def test_batch_contract_through_a_dataloader(small_root: Path):
    dm = SyntheticDataModule(
        root=str(small_root), image_size=48, batch_size=4, eval_batch_size=10, **small_kwargs()
    )
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (4, 3, 48, 48) and train["image"].dtype == torch.float32
    assert int(train["label"].sum()) == 0
    seen = 0
    for batch in dm.val_dataloader():
        b = batch["image"].shape[0]
        assert batch["image"].shape == (b, 3, 48, 48) and batch["image"].dtype == torch.float32
        assert batch["mask"].shape == (b, 1, 48, 48) and batch["mask"].dtype == torch.uint8
        assert set(torch.unique(batch["mask"]).tolist()) <= {0, 1}
        assert batch["label"].dtype == torch.long and batch["label"].shape == (b,)
        assert torch.equal(batch["label"], (batch["mask"].flatten(1).amax(1) > 0).long())
        assert isinstance(batch["category"], list) and set(batch["category"]) <= set(CATEGORIES)
        assert all(Path(p).is_file() for p in batch["path"])
        assert batch["index"].dtype == torch.long
        assert batch["index"].tolist() == list(range(seen, seen + b))
        seen += b
    assert seen == len(CATEGORIES) * SMALL.num_val


def test_all_categories_and_subsets(small_root: Path):
    dm = SyntheticDataModule(root=str(small_root), category="all", **small_kwargs())
    dm.setup("test")
    assert dm.test_dataset.categories == list(CATEGORIES)
    assert {s.defect_type for s in dm.test_dataset.samples} == {"good"} | {
        d for c in CATEGORIES for d in DEFECTS[c]
    }
    subset = SyntheticDataModule(root=str(small_root), category=["pill", "grid"], **small_kwargs())
    subset.setup("test")
    assert subset.test_dataset.categories == ["pill", "grid"]
    single = SyntheticDataModule(root=str(small_root), category="assembly", **small_kwargs())
    single.setup("test")
    assert single.test_dataset.categories == ["assembly"]
    with pytest.raises(DatasetError, match="bottle.*Available: stripes"):
        SyntheticDataModule(root=str(small_root), category="bottle", **small_kwargs()).setup("test")


def test_no_validation_split_when_num_val_is_zero(tmp_path: Path):
    dm = SyntheticDataModule(
        root=str(tmp_path / "d"), category="grid", generated_size=32, num_train=2, num_val=0, num_test=2
    )
    dm.setup("fit")
    assert dm.val_dataset is None and len(dm.train_dataset) == 2


# ---- cache ------------------------------------------------------------------------------------------------


def test_default_root_is_a_reused_cache(own_cache: Path, monkeypatch: pytest.MonkeyPatch):
    dm = SyntheticDataModule()  # the defaults, as the demo uses them
    assert dm.root == own_cache / "synthetic" / dm.spec.key
    dm.prepare_data()
    assert dm.generated
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (48 * 5, 16 * 5, 32 * 5)
    assert dm.test_dataset[0]["image"].shape == (3, 128, 128)  # image_size=None keeps the generated size
    marker_mtime = (dm.root / MARKER).stat().st_mtime_ns

    def no_regeneration(*args, **kwargs):
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr("anomaly_zoo.data.synthetic.write_dataset", no_regeneration)
    again = SyntheticDataModule(category="pill")
    assert again.root == dm.root
    again.setup()
    assert not again.generated and len(again.test_dataset) == 32
    assert (dm.root / MARKER).stat().st_mtime_ns == marker_mtime
    # Other parameters are another dataset in another directory; no temporary directories are left.
    assert default_root(SyntheticSpec(seed=1)) != dm.root
    assert [p.name for p in (own_cache / "synthetic").iterdir()] == [dm.root.name]


def test_concurrent_generation_is_safe(tmp_path: Path):
    root = tmp_path / "shared"
    spec = SyntheticSpec(generated_size=32, num_train=3, num_val=2, num_test=2, seed=3)
    results: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def worker() -> None:
        start.wait()
        try:
            results.append(ensure_generated(root, spec))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == [False, False, True]  # exactly one rename wins
    assert os.listdir(tmp_path) == ["shared"]  # the losers' temporary copies are gone
    reference = tmp_path / "reference"
    ensure_generated(reference, spec)
    assert tree_digest(root) == tree_digest(reference)


def test_stale_temporary_copies_are_removed(tmp_path: Path):
    stale = tmp_path / ".d.tmp-123-deadbeef"
    (stale / "pill").mkdir(parents=True)
    os.utime(stale, (0, 0))
    fresh = tmp_path / ".d.tmp-456-cafecafe"  # maybe another process at work: left alone
    fresh.mkdir()
    ensure_generated(tmp_path / "d", SyntheticSpec(generated_size=32, num_train=1, num_val=0, num_test=0))
    assert sorted(os.listdir(tmp_path)) == [".d.tmp-456-cafecafe", "d"]


def test_refuses_foreign_or_mismatched_roots(tmp_path: Path, small_root: Path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a synthetic dataset"):
        SyntheticDataModule(root=str(foreign)).setup()
    with pytest.raises(DatasetError, match="seed: 0 on disk vs 5 requested"):
        SyntheticDataModule(root=str(small_root), **{**small_kwargs(), "seed": 5}).setup()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ensure_generated(empty, SyntheticSpec(generated_size=32, num_train=1, num_val=0, num_test=0))


def test_missing_mask_is_reported(tmp_path: Path):
    root = tmp_path / "d"
    spec = SyntheticSpec(generated_size=32, num_train=1, num_val=2, num_test=2)
    ensure_generated(root, spec)
    next((root / "pill" / "ground_truth").rglob("*_mask.png")).unlink()
    dm = SyntheticDataModule(root=str(root), category="pill", **small_kwargs(spec))
    with pytest.raises(DatasetError, match="has no mask"):
        dm.setup("test")


# ---- the defects are learnable ---------------------------------------------------------------------------


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney AUROC (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(
        ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    )


def test_random_init_cnn_separates_defects(tmp_path: Path):
    """A tiny untrained CNN + nearest-neighbour patch distance already separates normal from defective."""
    spec = SyntheticSpec(generated_size=64, num_train=12, num_val=0, num_test=16, seed=11)
    dm = SyntheticDataModule(root=str(tmp_path / "d"), image_size=None, **small_kwargs(spec))
    dm.setup()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
    ).eval()

    def features(dataset, category):
        items = [dataset[i] for i in range(len(dataset)) if dataset.samples[i].category == category]
        with torch.no_grad():
            f = net(torch.stack([x["image"] for x in items]))
        patches = f.permute(0, 2, 3, 1).reshape(len(items), -1, f.shape[1])
        return patches, np.array([int(x["label"]) for x in items])

    results = {}
    for category in CATEGORIES:
        bank, _ = features(dm.train_dataset, category)
        test, labels = features(dm.test_dataset, category)
        distance = torch.cdist(test.reshape(-1, test.shape[-1]), bank.reshape(-1, bank.shape[-1])).amin(1)
        scores = distance.reshape(len(labels), -1).amax(1).numpy()
        results[category] = _auroc(scores, labels)
    assert np.mean(list(results.values())) > 0.8, results
    assert min(results.values()) > 0.6, results
