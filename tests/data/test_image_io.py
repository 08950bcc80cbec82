"""Reading what is on disk: colour modes, mask values, hidden files, corrupt files, size mismatches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.io import list_images, read_image, read_mask
from anomaly_zoo.data.mvtec_ad import MVTecAD
from anomaly_zoo.data.transforms import build_transform
from tests.data.layouts import SIZE, expected_mask, make_mvtec, one_batch, write_image, write_mask


def dataset_of(samples, image_size=None):
    return AnomalyDataset(samples, build_transform("none"), image_size)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "RGB"])
def test_every_colour_mode_becomes_three_channels(tmp_path, mode):
    path = write_image(tmp_path / f"img_{mode.replace(';', '')}.png", mode=mode)
    array = read_image(path)
    assert array.shape == (SIZE, SIZE, 3) and array.dtype == np.uint8
    item = dataset_of([Sample(str(path), 0, "c")], image_size=8)[0]
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32


def test_grayscale_channels_are_equal_and_16_bit_uses_the_full_range(tmp_path):
    gray = read_image(write_image(tmp_path / "gray.png", mode="L"))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    deep = read_image(write_image(tmp_path / "deep.png", mode="I;16"))
    assert deep.max() > 200  # not clipped to black/white by a naive 8-bit conversion
    assert len(np.unique(deep)) > 50
    # One fixed scale (65535 → 255), not each image's own maximum: a dark image stays dark.
    dark = tmp_path / "dark.png"
    Image.fromarray(np.full((4, 4), 2570, dtype=np.uint16)).save(dark)
    assert (read_image(dark) == 10).all()


def test_rgba_alpha_is_dropped(tmp_path):
    path = write_image(tmp_path / "rgba.png", mode="RGBA")
    rgb = np.asarray(Image.open(path))[..., :3]
    np.testing.assert_array_equal(read_image(path), rgb)  # opaque: colours unchanged


@pytest.mark.parametrize("value", [1, 255, 7])
def test_masks_are_binarised(tmp_path, value):
    mask = write_mask(tmp_path / "m.png", (slice(2, 6), slice(3, 7)), value=value)
    np.testing.assert_array_equal(read_mask(mask), expected_region())


def expected_region():
    out = np.zeros((SIZE, SIZE), bool)
    out[2:6, 3:7] = True
    return out


def test_rgb_and_rgba_masks(tmp_path):
    region = expected_region()
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[region, 0] = 128  # defect marked in one channel only
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), region)
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 3] = 255  # fully opaque: the alpha channel is not a defect
    rgba[region, :3] = 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgba.png"), region)


def test_mask_values_0_1_through_a_datamodule(tmp_path):
    root = make_mvtec(tmp_path, categories=("bottle",), defects={"crack": 2})
    for i in range(2):  # rewrite the masks with 0/1 values
        write_mask(
            root / f"bottle/ground_truth/crack/{i:03d}_mask.png", expected_mask(i).astype(bool), value=1
        )
    dm = MVTecAD(root, category="bottle", image_size=None, num_workers=0)
    dm.setup("test")
    batch = one_batch(dm.test_dataset)
    masks = batch["mask"][batch["label"] == 1]
    assert masks.dtype == torch.uint8 and set(masks.unique().tolist()) == {0, 1}
    assert masks.flatten(1).sum(1).tolist() == [16, 16]


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = make_mvtec(tmp_path, categories=("bottle",))
    train = root / "bottle/train/good"
    (train / ".DS_Store").write_bytes(b"\x00\x01junk")
    (train / "._000.png").write_bytes(b"AppleDouble resource fork")
    (train / "readme.txt").write_text("not an image")
    (train / "Thumbs.db").write_bytes(b"\x00")
    write_image(root / "bottle/test/.ipynb_checkpoints/000.png")  # hidden folder: not a defect type
    write_image(root / "bottle/test/crack/.hidden.png")
    (root / "bottle/ground_truth/crack/.DS_Store").write_bytes(b"x")
    dm = MVTecAD(root, category="bottle", image_size=None, num_workers=0)
    dm.setup()
    assert len(dm.train_dataset) == 3 and len(dm.test_dataset) == 5
    assert {s.defect_type for s in dm.test_dataset.samples} == {"good", "crack", "hole"}
    assert len(list_images(train)) == 3
    one_batch(dm.train_dataset)  # and every kept file reads


def test_corrupt_image_is_an_error_when_read(tmp_path):
    root = make_mvtec(tmp_path, categories=("bottle",))
    broken = root / "bottle/train/good/001.png"
    broken.write_bytes(b"this is not a png")
    truncated = root / "bottle/train/good/002.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    dm = MVTecAD(root, category="bottle", image_size=None, num_workers=0)
    dm.setup("fit")  # listing does not open files
    dm.train_dataset[0]
    with pytest.raises(DatasetError, match=str(broken)):
        dm.train_dataset[1]
    with pytest.raises(DatasetError, match=str(truncated)):
        dm.train_dataset[2]


def test_mask_size_must_match_image_size(tmp_path):
    root = make_mvtec(tmp_path, categories=("bottle",), defects={"crack": 1})
    mask = write_mask(
        root / "bottle/ground_truth/crack/000_mask.png", (slice(0, 2), slice(0, 2)), size=(SIZE, SIZE + 4)
    )
    dm = MVTecAD(root, category="bottle", image_size=32, num_workers=0)  # resizing must not hide it
    dm.setup("test")
    index = next(i for i, s in enumerate(dm.test_dataset.samples) if s.label)
    with pytest.raises(DatasetError) as err:
        dm.test_dataset[index]
    message = str(err.value)
    assert str(mask) in message and "000.png" in message and "20x16" in message and "16x16" in message


def test_anomalous_sample_needs_a_mask():
    with pytest.raises(DatasetError, match="x.png"):
        Sample("x.png", 1, "c")


def test_native_sizes_that_differ_within_a_batch_name_the_files_and_the_fix(tmp_path):
    from torch.utils.data import DataLoader

    from anomaly_zoo.data.collate import collate_samples

    small = write_image(tmp_path / "small.png", size=(16, 16))
    large = write_image(tmp_path / "large.png", size=(20, 24))
    dataset = dataset_of([Sample(str(small), 0, "a"), Sample(str(large), 0, "b")], image_size=None)
    with pytest.raises(DatasetError, match=r"different sizes.*large\.png.*image_size"):
        next(iter(DataLoader(dataset, batch_size=2, collate_fn=collate_samples)))
    batches = list(DataLoader(dataset, batch_size=1, collate_fn=collate_samples))  # batch size 1 keeps them
    assert [tuple(b["image"].shape[-2:]) for b in batches] == [(16, 16), (20, 24)]
    assert batches[1]["category"] == ["b"] and batches[1]["index"].tolist() == [1]
