"""MoECLIP through Lightning: the transductive protocol vs brute force, routing statistics, captions, the
zero-shot guard, and the authors' checkpoint layout."""

from __future__ import annotations

import copy
import csv

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from anomaly_zoo.data.cross_dataset import CrossDataset
from anomaly_zoo.data.errors import DatasetError
from anomaly_zoo.data.synthetic import SyntheticDataModule
from anomaly_zoo.metrics import ImageAUROC, PixelAUROC
from anomaly_zoo.models.moeclip import MoECLIP, OfficialCheckpointError, convert_official_state_dict
from anomaly_zoo.models.moeclip.model import TINY_CLIP_CONFIG

SIZE = 32
TINY = {"clip_config": TINY_CLIP_CONFIG, "pretrained": False, "image_size": SIZE, "adapter_blocks": (1, 2, 3, 4)}
TRAINER = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
           "enable_progress_bar": False, "enable_model_summary": False}


def _data(categories=("stripes", "pill"), seed=1, **kwargs) -> SyntheticDataModule:
    return SyntheticDataModule(category=list(categories), generated_size=SIZE, num_train=1, num_val=0, num_test=8,
                               seed=seed, normalization="clip", batch_size=5, **kwargs)


def _randomised(module: MoECLIP) -> MoECLIP:
    torch.manual_seed(3)
    with torch.no_grad():
        for adapter in module.model.adapters:
            adapter.up.normal_(std=0.05)
            adapter.router.gate.weight.normal_(std=0.5)
    return module


def test_test_set_normalisation_equals_brute_force_over_all_maps(tmp_path):
    torch.manual_seed(0)
    module = _randomised(MoECLIP(**TINY, score_normalization="test_set", pixel_metrics="exact", results_dir=str(tmp_path)))
    finished = []
    finish = module.finish_set
    module.finish_set = lambda stats, ranges: finished.append(finish(stats, ranges)["pred_score"]) or {"pred_score": finished[-1]}
    data = _data()
    pl.Trainer(**TRAINER).test(module, datamodule=data, verbose=False)
    table = module.results["test"]

    # brute force: every full map of a category kept, the authors' metrics_eval normalisation, then the rule
    module.eval()
    data.setup("test")
    maps, scores, masks, labels, cats = [], [], [], [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            out = module.model.predict(batch["image"], batch["category"])
            maps.append(out["anomaly_map"][:, 0].numpy())
            scores.append(out["detection_score"].numpy())
            masks.append(batch["mask"][:, 0].numpy())
            labels.append(batch["label"].numpy())
            cats += batch["category"]
    maps, scores, masks, labels = map(np.concatenate, (maps, scores, masks, labels))
    cats = np.array(cats)
    for index, category in enumerate(["stripes", "pill"]):
        chosen = cats == category
        m, s = maps[chosen], scores[chosen]
        if m.max() > 1 or m.min() < 0:
            m = (m - m.min()) / (m.max() - m.min())
        if s.max() > 1 or s.min() < 0:
            s = (s - s.min()) / (s.max() - s.min())
        expected = 0.5 * m.max(axis=(1, 2)) + 0.5 * s
        assert np.allclose(finished[index].cpu().numpy(), expected, atol=1e-5)
        image_auroc = ImageAUROC()
        image_auroc.update(torch.from_numpy(expected), torch.from_numpy(labels[chosen]))
        pixel_auroc = PixelAUROC()
        pixel_auroc.update(torch.from_numpy(m), torch.from_numpy(masks[chosen]))
        assert table.loc[category, "I-AUROC"] == pytest.approx(100 * float(image_auroc.compute()), abs=1e-4)
        assert table.loc[category, "P-AUROC"] == pytest.approx(100 * float(pixel_auroc.compute()), abs=1e-4)
    caption = (tmp_path / "test_results.md").read_text()
    assert "Transductive" in caption and "etf_weight 0.01 (the paper), lb_weight 0" in caption


def test_routing_statistics_written_with_the_results(tmp_path):
    torch.manual_seed(0)
    module = _randomised(MoECLIP(**TINY, etf_weight=0.0, results_dir=str(tmp_path)))
    pl.Trainer(**TRAINER).test(module, datamodule=_data(), verbose=False)
    rows = list(csv.DictReader((tmp_path / "routing_statistics.csv").open()))
    assert (tmp_path / "test_results.csv").is_file()
    assert len(rows) == 4 * 4 and {r["block"] for r in rows} == {"1", "2", "3", "4"}
    for block in "1234":
        layer = [r for r in rows if r["block"] == block]
        assert sum(int(r["slots"]) for r in layer) == 16 * (1 + 16) * 2  # images × tokens × top-2
        assert sum(float(r["share"]) for r in layer) == pytest.approx(1.0, abs=1e-5)
    caption = (tmp_path / "test_results.md").read_text()
    assert "Non-transductive" in caption and "etf_weight 0 (the authors' release" in caption


def test_zero_shot_tests_unseen_categories_and_the_guard_fires():
    fit_side = SyntheticDataModule(category=["stripes"], generated_size=SIZE, num_train=1, num_val=0, num_test=4,
                                   seed=0, normalization="clip", batch_size=4)
    data = CrossDataset(fit_side, _data(("grid",)), train_split="test")
    torch.manual_seed(0)
    module = MoECLIP(**TINY)
    trainer = pl.Trainer(max_steps=1, num_sanity_val_steps=0, **TRAINER)
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)
    assert data.train_categories == ["stripes"] and list(module.results["test"].index) == ["grid", "mean"]
    seen = CrossDataset(copy.deepcopy(fit_side), _data(("stripes", "grid")), train_split="test")
    with pytest.raises(DatasetError, match=r"\['stripes'\] also appear in training.*allow_seen_categories"):
        seen.setup("fit")
    allowed = CrossDataset(copy.deepcopy(fit_side), _data(("stripes",)), train_split="test", allow_seen_categories=True)
    allowed.setup("fit")
    assert allowed.categories == ["stripes"]


# ---- the authors' checkpoint layout ------------------------------------------------------------------------
def _authors_layout(module: MoECLIP) -> dict:
    """Our trained tensors written in the layout of the authors' train.py (spec table), by hand."""
    model = module.model
    image = {}
    for j, adapter in enumerate(model.adapters):
        image[f"seg_proj.{j}.fc.weight"] = model.seg_projections[j].weight.detach().clone()
        image[f"moe_adapters.{j}.gate.weight"] = adapter.router.gate.weight.detach().clone()
        for i in range(adapter.num_experts):
            image[f"moe_adapters.{j}.experts.{i}.lora_A.weight"] = adapter.down[i].clone()
            image[f"moe_adapters.{j}.experts.{i}.lora_B.weight"] = adapter.up[i].detach().clone()
    head = model.detection_head
    image.update({"det_proj.ln.weight": head.norm.weight.detach().clone(), "det_proj.ln.bias": head.norm.bias.detach().clone(),
                  "det_proj.adapter.0.weight": head.depthwise.weight.detach().clone(),
                  "det_proj.adapter.2.weight": head.pointwise.weight.detach().clone()})
    return {"epoch": 20, "optimizer_state_dict": {}, "image_adapter": image,
            "text_adapter": {"0.fc.0.weight": model.text_adapter.proj.weight.detach().clone()}}


def test_fake_authors_checkpoint_converts_loads_strictly_and_reproduces_the_forward(tmp_path):
    torch.manual_seed(0)
    reference = _randomised(MoECLIP(**TINY)).eval()
    with torch.no_grad():
        reference.model.detection_head.norm.bias.normal_()
    checkpoint = _authors_layout(reference)
    assert len(checkpoint["image_adapter"]) == 44  # the spec's count for 4 levels × 4 experts
    path = tmp_path / "moe_last.pth"
    torch.save(checkpoint, path)
    torch.manual_seed(0)  # the same frozen (random) CLIP; every adapter tensor comes from the file
    loaded = MoECLIP(**TINY, official_checkpoint=str(path)).eval()
    images = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = reference.predict_anomaly(images, ["bottle"] * 3), loaded.predict_anomaly(images, ["bottle"] * 3)
    assert torch.equal(a["anomaly_map"], b["anomaly_map"]) and torch.equal(a["pred_score"], b["pred_score"])
    converted = convert_official_state_dict(checkpoint)
    assert converted["adapters.2.down"].shape == (4, 8, 64) and converted["adapters.2.up"].shape == (4, 64, 8)


def test_authors_checkpoint_mismatches_fail_clearly():
    torch.manual_seed(0)
    module = MoECLIP(**TINY)
    good = _authors_layout(module)

    def broken(edit) -> dict:
        checkpoint = copy.deepcopy(good)
        edit(checkpoint["image_adapter"])
        return checkpoint

    from anomaly_zoo.models.moeclip.convert import load_official_state_dict
    with pytest.raises(OfficialCheckpointError, match="Unknown tensors.*image_adapter.extra"):
        load_official_state_dict(module.model, broken(lambda d: d.update({"extra.weight": torch.zeros(1)})))
    with pytest.raises(OfficialCheckpointError, match="missing.*seg_projections.3.weight"):
        load_official_state_dict(module.model, broken(lambda d: d.pop("seg_proj.3.fc.weight")))
    with pytest.raises(OfficialCheckpointError, match="Shape mismatch.*router.gate"):
        load_official_state_dict(module.model, broken(lambda d: d.update({"moe_adapters.0.gate.weight": torch.zeros(5, 64)})))
    with pytest.raises(OfficialCheckpointError, match="--relu"):
        load_official_state_dict(module.model, broken(lambda d: d.update({"seg_proj.0.fc.0.weight": d.pop("seg_proj.0.fc.weight")})))
    with pytest.raises(OfficialCheckpointError, match="not 0..K-1"):
        load_official_state_dict(module.model, broken(lambda d: d.pop("moe_adapters.1.experts.0.lora_B.weight")))


def test_images_without_a_category_get_the_generic_prompt_as_in_an_exported_graph():
    """`predict imgs/` (or `--data folder`) without --data.category names its images "images" ("folder"); the
    prompts must not say so."""
    from anomaly_zoo.data.images import FOLDER_CATEGORY, UNNAMED_CATEGORY
    from anomaly_zoo.models.moeclip.lightning import DEFAULT_CATEGORY

    torch.manual_seed(0)
    module = _randomised(MoECLIP(**TINY)).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        unnamed = module.predict_anomaly(images, [UNNAMED_CATEGORY] * 2)["pred_score"]
        generic = module.predict_anomaly(images)["pred_score"]  # no category: what the exported graph runs
        named = module.predict_anomaly(images, ["pill", "pill"])["pred_score"]
    assert module._categories_for(images, [UNNAMED_CATEGORY, "pill"]) == [DEFAULT_CATEGORY, "pill"]
    assert module._categories_for(images, [FOLDER_CATEGORY] * 2) == [DEFAULT_CATEGORY] * 2
    torch.testing.assert_close(unnamed, generic, rtol=0, atol=0)
    assert not torch.equal(named, generic)  # the prompt does reach the scores
