"""DDP for models that train nothing by gradient (statistics-only passes such as ``feature_distance``).

torch's ``DistributedDataParallel`` refuses a module without a parameter that requires a gradient ("DDP is
not needed when a module doesn't have any parameter that requires a gradient"), and there is no gradient to
synchronise anyway. The process group still exists, so such a model reduces its own statistics over the
ranks (``strategy.reduce``); only the wrapper is skipped.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy


def trains_by_gradient(module: pl.LightningModule) -> bool:
    """True when some parameter of ``module`` requires a gradient."""
    return any(p.requires_grad for p in module.parameters())


def keep_unwrapped_under_ddp(trainer: pl.Trainer) -> bool:
    """Make this run's DDP strategy leave a gradient-free module unwrapped; True if it did.

    Call from the LightningModule's ``setup("fit")`` hook, which Lightning runs before the strategy wraps
    the model. ``DDPStrategy.configure_ddp`` (wrap + communication hooks, both only about gradients) is
    shadowed on this strategy instance only; everything else of DDP (process group, samplers, ``reduce``,
    ``barrier``, rank-0 checkpointing) is unchanged.
    """
    strategy = trainer.strategy
    module = strategy.lightning_module
    if not isinstance(strategy, DDPStrategy) or module is None or trains_by_gradient(module):
        return False
    strategy.configure_ddp = lambda: None  # type: ignore[method-assign]  # instance attribute, this run only
    return True
