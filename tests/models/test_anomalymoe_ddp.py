"""AnomalyMoE under DDP: a 2-process CPU (gloo) fit with the default strategy (no ``find_unused_parameters``).

Unrouted experts get no gradient in the selected-only forward, which plain DDP refuses ("parameters that were not
used in producing the loss"); ``AnomalyMoE.gradient_anchor`` gives every trainable tensor an exact-zero gradient
(the authors' semantics: all experts run, zero-weighted), and the CLUB estimator's own step averages its gradients
over the ranks. Every rank saves its weights after fit: they must be identical (experts, router, estimator), so a
rank-local update — e.g. the estimator stepped on its rank's data alone — fails the test, as does the DDP error.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import lightning.pytorch as pl
    import torch

    from anomaly_zoo.data.synthetic import SyntheticDataModule
    from anomaly_zoo.models.anomalymoe import AnomalyMoE

    out = Path(sys.argv[1])


    class SaveEveryRank(pl.Callback):
        def on_train_end(self, trainer, module):
            torch.save({"model": module.state_dict(), "steps": trainer.global_step,
                        "selected_all": sorted(module.selected_ever)}, out / f"rank{trainer.global_rank}.pt")


    class Recording(AnomalyMoE):
        selected_ever: set = set()

        def compute_losses(self, batch, eir_draw=None, run_all=False):
            losses = super().compute_losses(batch, eir_draw, run_all)
            self.selected_ever |= set(losses["out"]["routing"].selected.any(0).nonzero().flatten().tolist())
            return losses


    pl.seed_everything(0)
    data = SyntheticDataModule(root=str(out / "data"), category=["carpet", "assembly"], generated_size=64,
                               num_train=8, num_val=0, num_test=4, image_size=64, batch_size=4, num_workers=0)
    model = Recording(
        backbone_kwargs={"embed_dim": 24, "depth": 12, "num_heads": 2, "img_size": 70}, pretrained=False,
        decoder_heads=2, router_hidden=16, global_ae_channels=(4, 4, 8), global_student_channels=(4, 8),
        global_input_size=56, component_hidden=16, component_inner=8, component_code=8, warmup_iters=1,
        mask_settings={"pretrained": False, "feature_model_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2},
                       "image_size": 64, "coreset_ratio": 0.1, "progress": False, "cache_dir": str(out / "cache")},
    )
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[SaveEveryRank()],
                         default_root_dir=str(out))
    trainer.fit(model, datamodule=data)
""")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_process_ddp_fit_needs_no_unused_parameter_search_and_keeps_ranks_identical(tmp_path: Path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=580)
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 4  # 16 images, 2 ranks × batch 4, 2 epochs
    assert len(ranks[0]["selected_all"]) < 18  # some experts were never routed: the anchor was needed
    first, second = ranks[0]["model"], ranks[1]["model"]
    assert first.keys() == second.keys() and any(k.startswith("eir.") for k in first)
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, different
