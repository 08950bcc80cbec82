"""MVTec LOCO AD defects for sPRO: defects_config.json, one bit per defect mask, saturation areas, splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.loco_defects import DefectSpec, load_defects_config, saturation_area
from anomaly_zoo.data.mvtec_loco import MVTecLOCO
from anomaly_zoo.metrics import AnomalyMetrics
from tests.data.layouts import box, make_loco, make_loco_with_config, one_batch, stem_index, write_mask

# saturation of a 4x4 box (16 px) for entries 0, 1, 2 of LOCO_DEFECT_CONFIG: 100 %, 5 px, 50 %
NATIVE_SATURATION = (16.0, 5.0, 8.0)


def loco(root, **kwargs):
    return MVTecLOCO(root, **{"image_size": None, "num_workers": 0, **kwargs})


def test_defects_become_bits_with_their_saturation_and_split(tmp_path):
    dm = loco(make_loco_with_config(tmp_path, n_anomalous=3), category="pushpins")
    dm.setup("test")
    batch = one_batch(dm.test_dataset)
    codes = {"good": 0, "structural_anomalies": 1, "logical_anomalies": 2}
    for path, regions, sat, split, mask in zip(
        batch["path"], batch["spro_regions"], batch["spro_saturation"], batch["spro_split"], batch["mask"]
    ):
        assert int(split) == codes[path.split("/")[-2]]
        assert regions.dtype == torch.int64 and sat.shape == (62,)
        np.testing.assert_array_equal((regions != 0).numpy(), mask.numpy())  # the union is the mask
        n = 0 if split == 0 else stem_index(path) + 1  # image i has masks 0 .. i
        for k in range(n):
            expected = np.zeros((16, 16), bool)
            expected[box(3 * k)] = True
            np.testing.assert_array_equal(((regions[0] >> k) & 1).bool().numpy(), expected)
        assert sat[:n].tolist() == [NATIVE_SATURATION[k % 3] for k in range(n)]
        assert not sat[n:].any() and int(regions.max()) < 2**n


def test_saturation_scales_with_the_resized_area(tmp_path):
    dm = loco(make_loco_with_config(tmp_path, n_anomalous=2), category="pushpins", image_size=8)
    dm.setup("test")
    batch = one_batch(dm.test_dataset)
    i = [j for j, p in enumerate(batch["path"]) if p.endswith("structural_anomalies/001.png")][0]
    # boxes of 16 px become 4 px at 8x8: 100 % -> 4, 5 px absolute -> 5 * 4 / 16
    assert batch["spro_saturation"][i, :2].tolist() == [4.0, 1.25]
    assert batch["spro_regions"].shape[-2:] == (8, 8)


def test_official_saturation_rule():
    assert saturation_area(DefectSpec("a", 255, 0.33, True), 10) == 3  # int(3.3)
    assert saturation_area(DefectSpec("a", 255, 7, False), 5) == 5  # min(threshold, area)
    assert saturation_area(DefectSpec("a", 255, 0.1, True), 4) == 1  # 0 -> saturated by the first pixel


def test_unknown_mask_value_names_the_file_and_the_config(tmp_path):
    root = make_loco_with_config(tmp_path, categories=("pushpins",))
    bad = root / "pushpins/ground_truth/logical_anomalies/001/001.png"
    write_mask(bad, box(3), value=7)
    dm = loco(root)
    dm.setup("test")
    with pytest.raises(DatasetError, match="logical_anomalies/001/001.png") as err:
        one_batch(dm.test_dataset)
    assert "defects_config.json" in str(err.value) and "254 (extra_part)" in str(err.value)


def test_invalid_config_entry(tmp_path):
    path = tmp_path / "defects_config.json"
    path.write_text(json.dumps([{"defect_name": "x", "pixel_value": 1, "saturation_threshold": 2.0,
                                 "relative_saturation": True}]))  # fmt: skip
    with pytest.raises(DatasetError, match="relative saturation_threshold in"):
        load_defects_config(path)
    path.write_text("[{}]")
    with pytest.raises(DatasetError, match="pixel_value"):
        load_defects_config(path)


def test_without_config_the_merged_masks_still_load(tmp_path):
    dm = loco(make_loco(tmp_path, categories=("pushpins",)))
    with pytest.warns(UserWarning, match="sPRO is not reported"):
        dm.setup("test")
    assert "spro_regions" not in one_batch(dm.test_dataset)


@pytest.mark.parametrize("mode", ["exact", "streaming"])
def test_results_table_reports_spro_per_split(tmp_path, mode):
    dm = loco(make_loco_with_config(tmp_path, n_anomalous=2), category="all")
    dm.setup("test")
    batch = one_batch(dm.test_dataset)
    metrics = AnomalyMetrics(dm.categories, pixel_mode=mode)
    # a perfect map for structural images; logical defects score below every normal pixel
    maps = batch["mask"].float()
    maps[batch["spro_split"] == 2] = 1.0 - maps[batch["spro_split"] == 2]
    scores = (batch["spro_split"] == 1).double()
    metrics.update({"anomaly_map": maps, "pred_score": scores}, batch)
    table = metrics.compute()
    assert list(table.index) == ["breakfast_box", "pushpins", "mean"]
    assert table.loc["mean", "sPRO-struct"] == pytest.approx(100.0)
    assert table.loc["mean", "sPRO-logic"] == pytest.approx(0.0)
    assert table.loc["mean", "sPRO"] == pytest.approx(50.0)
    assert table.loc["mean", "I-AUROC-struct"] == pytest.approx(100.0)
    assert table.loc["mean", "I-AUROC-logic"] == pytest.approx(50.0)
    assert "sPRO bound" in metrics.details.columns


def test_set_level_protocol_scores_at_epoch_end(tmp_path):
    # MoECLIP's protocol: maps stream per batch (with the sPRO keys), scores come at the end with only
    # label / index / category; the per-split image AUROC must equal the one-pass result.
    dm = loco(make_loco_with_config(tmp_path, n_anomalous=2), category="pushpins")
    dm.setup("test")
    batch = one_batch(dm.test_dataset)
    maps = torch.rand(batch["mask"].shape, generator=torch.Generator().manual_seed(0))
    scores = torch.rand(len(maps), generator=torch.Generator().manual_seed(1)).double()
    one_pass = AnomalyMetrics(dm.categories, pixel_mode="exact")
    one_pass.update({"anomaly_map": maps, "pred_score": scores}, batch)
    split_pass = AnomalyMetrics(dm.categories, pixel_mode="exact")
    split_pass.update({"anomaly_map": maps}, batch)
    late = {k: batch[k] for k in ("label", "index", "category")}
    split_pass.update({"pred_score": scores}, late)
    expected, got = one_pass.compute(), split_pass.compute()
    for column in ("sPRO", "I-AUROC-struct", "I-AUROC-logic", "I-AUROC"):
        assert got.loc["pushpins", column] == pytest.approx(expected.loc["pushpins", column])


def test_spro_keys_pack_for_set_level_buffers(tmp_path):
    from anomaly_zoo.data.loco_defects import pack_spro_item, unpack_spro_items

    dm = loco(make_loco_with_config(tmp_path, n_anomalous=3), category="pushpins")
    dm.setup("test")
    batch = one_batch(dm.test_dataset)
    items = [pack_spro_item(batch, i) for i in range(len(batch["path"]))]
    assert sum(item[0].nbytes for item in items) < batch["spro_regions"].numel()  # far below 8 B / pixel
    restored = unpack_spro_items(items)
    for key in ("spro_regions", "spro_saturation", "spro_split"):
        assert torch.equal(restored[key], batch[key]), key
    assert pack_spro_item({"label": batch["label"]}, 0) is None


def test_deferred_maps_through_the_set_level_buffer(tmp_path):
    # AnomalyMoE's protocol: nothing reaches the metrics per batch; the buffer keeps the masks and the
    # sPRO keys, and hands both back with the maps at epoch end.
    from anomaly_zoo.models.components.set_level import SetLevelBuffer

    dm = loco(make_loco_with_config(tmp_path, n_anomalous=2), category="pushpins")
    dm.setup("test")
    batch = one_batch(dm.test_dataset)
    maps = torch.rand(batch["mask"].shape, generator=torch.Generator().manual_seed(2))
    scores = maps.flatten(1).amax(1).double()
    one_pass = AnomalyMetrics(dm.categories, pixel_mode="exact")
    one_pass.update({"anomaly_map": maps, "pred_score": scores}, batch)
    buffer = SetLevelBuffer(dm.categories, (), keep_masks=True)
    buffer.add({"row": torch.arange(len(maps))}, batch)
    deferred = AnomalyMetrics(dm.categories, pixel_mode="exact")

    def finish_set(stats, ranges):
        rows = stats["row"]
        return {"pred_score": scores[rows], "anomaly_map": maps[rows]}

    buffer.finish(finish_set, deferred.update)
    expected, got = one_pass.compute(), deferred.compute()
    for column in ("sPRO", "sPRO-struct", "sPRO-logic", "I-AUROC-struct", "AUPRO"):
        assert got.loc["pushpins", column] == pytest.approx(expected.loc["pushpins", column])
