"""Export: ONNX (run by onnxruntime) and TorchScript match PyTorch on the demo configs (random init)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml

from anomaly_zoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from anomaly_zoo.export import export_model, load_model
from anomaly_zoo.export.exporter import ExportError, example_images
from anomaly_zoo.export.to_torchscript import METADATA_FILE
from anomaly_zoo.models.components.thresholds import Thresholds

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo"
#: Models whose demo config exports with a dynamic batch axis (see the export README section for the others).
EXPORTABLE = ("feature_distance", "uniad")


def demo_model(name: str):
    """The demo config's model, random init, with the preprocessing of its data and hand-set thresholds."""
    config = yaml.safe_load((DEMO / f"{name}.yaml").read_text())
    module, _, cls = config["model"]["class_path"].rpartition(".")
    model = getattr(importlib.import_module(module), cls)(**config["model"].get("init_args", {})).eval()
    data = config["data"]["init_args"]
    data = data.get("test_data", {}).get("init_args", data)
    size = data.get("image_size") or data.get("generated_size", 128)
    size = [size, size] if isinstance(size, int) else list(size)
    model.preprocessing = {"image_size": size, "normalization": "imagenet", "mean": list(IMAGENET_MEAN),
                           "std": list(IMAGENET_STD), "interpolation": "bilinear"}
    if hasattr(model.model, "accumulate"):  # statistics-only baseline: "fit" it on a few random images
        model.model.accumulate(example_images(model.preprocessing, (4, 3, *size), seed=5))
    with torch.no_grad():
        output = model.predict_anomaly(example_images(model.preprocessing, (2, 3, *size), seed=6))
    score, pixel = float(output["pred_score"].mean()), float(output["anomaly_map"].mean())
    model.thresholds = Thresholds(image=score, pixel=pixel, image_range=(score - 1.0, score + 1.0),
                                  pixel_range=(pixel - 1.0, pixel + 1.0), image_method="hand",
                                  pixel_method="hand", source="test", n_images=2)
    return model


@pytest.mark.parametrize("name", EXPORTABLE)
def test_onnx_export_runs_in_onnxruntime_and_matches_pytorch(name, tmp_path):
    model = demo_model(name)
    result = export_model(model, "onnx", tmp_path / name, onnx_exporter="tracing")
    assert result.max_map_diff <= 1e-4 and result.max_score_diff <= 1e-4
    # Independently of the exporter's own check: another batch size, other images, our own session.
    images = example_images(model.preprocessing, (4, 3, *model.preprocessing["image_size"]), seed=11)
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    anomaly_map, pred_score = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model.predict_anomaly(images)
    np.testing.assert_allclose(anomaly_map, expected["anomaly_map"].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(pred_score, expected["pred_score"].numpy(), atol=1e-4, rtol=0)
    metadata = json.loads({p.key: p.value for p in onnx.load(str(result.path)).metadata_props}["anomaly_zoo"])
    assert metadata["thresholds"]["image"] == pytest.approx(model.thresholds.image)
    assert metadata["input"]["preprocessing"]["image_size"] == model.preprocessing["image_size"]


@pytest.mark.parametrize("name", EXPORTABLE)
def test_torchscript_export_matches_pytorch_and_folds_in_the_normalisation(name, tmp_path):
    model = demo_model(name)
    model.thresholds.normalize = True
    result = export_model(model, "torchscript", tmp_path / name)
    assert result.max_map_diff <= 1e-4 and result.max_score_diff <= 1e-4
    extra = {METADATA_FILE: ""}
    module = torch.jit.load(str(result.path), _extra_files=extra)
    assert json.loads(extra[METADATA_FILE])["thresholds"]["image"] == 0.5  # in the normalised unit
    images = example_images(model.preprocessing, (3, 3, *model.preprocessing["image_size"]), seed=12)
    with torch.no_grad():
        _, score = module(images)
        raw = model.predict_anomaly(images)["pred_score"]
    torch.testing.assert_close(score, model.thresholds.normalized_image(raw), atol=1e-5, rtol=0)
    assert float(score.min()) >= 0.0 and float(score.max()) <= 1.0


def test_export_from_a_checkpoint_and_a_refusal_names_the_reason(tmp_path):
    model = demo_model("feature_distance")
    model.epochs_trained = 1
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "pytorch-lightning_version": "2.6.0"}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    loaded = load_model(tmp_path / "model.ckpt")
    assert loaded.thresholds == model.thresholds and loaded.preprocessing == model.preprocessing
    result = export_model(loaded, "torchscript", tmp_path / "fd")
    assert result.max_map_diff <= 1e-4

    loaded.export_limitations = lambda export_format: "routing picks experts per image in Python"
    with pytest.raises(ExportError, match="routing picks experts per image"):
        export_model(loaded, "onnx", tmp_path / "refused")


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPORTABLE)
def test_onnx_default_exporter_matches_pytorch(name, tmp_path):
    """The default path (torch.export-based 'dynamo' exporter, falling back to tracing)."""
    result = export_model(demo_model(name), "onnx", tmp_path / name)
    assert result.max_map_diff <= 1e-4 and result.max_score_diff <= 1e-4


@pytest.mark.slow
def test_moeclip_exports_to_torchscript_at_a_fixed_batch_size(tmp_path):
    """Per-image text prompts make batch-sized constants: dynamic batch is not traceable, a fixed one is."""
    result = export_model(demo_model("moeclip"), "torchscript", tmp_path / "moeclip", batch_size=2)
    assert result.max_map_diff <= 1e-4 and result.max_score_diff <= 1e-4


def test_a_stable_sort_exports_as_topk_with_the_same_tie_order(tmp_path):
    """Routers sort stably (device-independent expert choice); torch.onnx has no translation of its own."""
    from anomaly_zoo.export.to_onnx import _translations

    class Sort(torch.nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=-1, descending=True, stable=True)

    x = torch.tensor([[0.1, 0.5, 0.5, 0.2, 0.5], [1.0, 1.0, 0.0, 1.0, 2.0]])  # ties: lower index first
    program = torch.onnx.export(Sort().eval(), (x,), dynamo=True, custom_translation_table=_translations(),
                                external_data=False)
    program.save(str(tmp_path / "sort.onnx"), external_data=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "sort.onnx"), providers=["CPUExecutionProvider"])
    values, indices = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    expected = Sort()(x)
    np.testing.assert_array_equal(indices, expected.indices.numpy())
    assert indices[0].tolist() == [1, 2, 4, 3, 0]
    np.testing.assert_array_equal(values, expected.values.numpy())


@pytest.mark.slow
def test_moeclip_exports_to_onnx_at_a_fixed_batch_size(tmp_path):
    result = export_model(demo_model("moeclip"), "onnx", tmp_path / "moeclip", batch_size=1)
    assert result.exporter == "torch.onnx dynamo exporter"
    assert result.max_map_diff <= 1e-4 and result.max_score_diff <= 1e-4
