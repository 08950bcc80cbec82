"""Start-up stays lean: ``import anomaly_zoo.cli`` imports no model package and no heavy optional dependency.

Each check runs in a fresh interpreter (the test process has imported most of these modules already). What
``import anomaly_zoo.cli`` still imports on purpose: torch, Lightning (and through it torchmetrics and
torchvision, with torch._dynamo), jsonargparse, and the data pipeline every command uses (albumentations,
OpenCV, Pillow, the scipy core albumentations imports).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: Must not be in ``sys.modules`` after ``import anomaly_zoo.cli``: every model package (each is imported when
#: its model is used), and the heavy optional modules no start-up needs.
NOT_AT_STARTUP = (
    "anomaly_zoo.models.uniad", "anomaly_zoo.models.moeclip", "anomaly_zoo.models.anomalymoe",
    "anomaly_zoo.models.feature_distance", "anomaly_zoo.export.exporter",
    "open_clip", "peft", "timm", "transformers", "wandb", "matplotlib", "mpl_toolkits.mplot3d", "sklearn",
    "scipy.signal", "pandas", "onnx", "onnxruntime",
)


def _modules_after(code: str, eager: bool = False) -> dict:
    """Run ``import anomaly_zoo.cli`` then ``code`` (which fills the dict ``out``) in a fresh interpreter."""
    script = f"import json, sys\nimport anomaly_zoo.cli\nout = {{'startup': sorted(sys.modules)}}\n{code}\nprint(json.dumps(out))"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANOMALY_ZOO_EAGER_IMPORTS": "1" if eager else ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cli_import_loads_no_model_and_no_heavy_optional_module():
    out = _modules_after("""
from anomaly_zoo.registry import MODELS
out['names'] = MODELS.names()
out['after_names'] = sorted(sys.modules)
uniad = MODELS['uniad']
out['uniad'] = f'{uniad.__module__}.{uniad.__qualname__}'
out['after_uniad'] = sorted(sys.modules)
import timm.utils.summary
out['timm_has_wandb'] = hasattr(timm.utils.summary, 'wandb')
import wandb, transformers, matplotlib.pyplot  # still importable as usual
out['wandb_run'] = callable(wandb.init) and 'wandb.sdk' in sys.modules
import torchmetrics.utilities.imports as tm
out['tm_checks_after'] = bool(tm._TRANSFORMERS_AVAILABLE), bool(tm._SCIPY_AVAILABLE)
""")
    loaded = set(out["startup"])
    assert not loaded & set(NOT_AT_STARTUP), sorted(loaded & set(NOT_AT_STARTUP))
    # Listing the models' names imports none of them; looking one up imports that one only.
    assert out["names"] == ["anomalymoe", "feature_distance", "moeclip", "uniad"]
    assert not set(out["after_names"]) & set(NOT_AT_STARTUP)
    assert out["uniad"] == "anomaly_zoo.models.uniad.lightning.UniAD"
    after_uniad = set(out["after_uniad"])
    assert "anomaly_zoo.models.uniad" in after_uniad
    assert not after_uniad & {"anomaly_zoo.models.moeclip", "anomaly_zoo.models.anomalymoe", "open_clip", "peft"}
    # timm's own optional `import wandb` was skipped, every later import of wandb is the real one; the
    # availability checks torchmetrics runs after its import answer truthfully.
    assert out["timm_has_wandb"] is False
    assert out["wandb_run"] is True
    assert out["tm_checks_after"] == [True, True]


@pytest.mark.slow
def test_eager_imports_switch_shows_what_the_fast_start_skips():
    """The control: with ANOMALY_ZOO_EAGER_IMPORTS=1 the libraries import their optional modules as they do on
    their own, so the check above is not vacuous."""
    out = _modules_after("import timm.utils.summary\nout['timm_has_wandb'] = hasattr(timm.utils.summary, 'wandb')",
                         eager=True)
    assert {"transformers", "matplotlib", "scipy.signal"} <= set(out["startup"])
    assert out["timm_has_wandb"] is True


def test_registry_entries_match_the_registered_classes():
    """Each lazy entry names the module that defines (and registers) its class, so class paths given to
    jsonargparse, checkpoints' ``_class_path`` and ``registry_name`` all agree."""
    from anomaly_zoo.registry import MODELS

    for name in MODELS.names():
        cls = MODELS[name]
        assert MODELS.class_path(name) == f"{cls.__module__}.{cls.__qualname__}"
        assert cls.registry_name == name and MODELS.name_of(cls) == name
        assert MODELS.class_name(name) == cls.__name__
