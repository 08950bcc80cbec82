"""Which imaging domain a dataset belongs to ("industrial" or "medical"), for models with domain rules.

MoECLIP, for instance, prompts and post-processes medical images differently. A DataModule declares its
domain with a ``DOMAIN`` class attribute; DataModules without one are industrial.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DOMAINS", "dataset_domain"]

DOMAINS = ("industrial", "medical")


def dataset_domain(datamodule: Any) -> str:
    """``datamodule.DOMAIN`` (an instance or a class), ``"industrial"`` when it declares none."""
    domain = getattr(datamodule, "DOMAIN", "industrial")
    if domain not in DOMAINS:
        raise ValueError(f"{type(datamodule).__name__}.DOMAIN must be one of {DOMAINS}, got {domain!r}")
    return domain
