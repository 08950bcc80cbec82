"""Importing this module registers every DataModule in ``anomaly_zoo.registry.DATAMODULES``.

The registry imports it on its first lookup (``populate``); importing :mod:`anomaly_zoo.data` alone does not,
so torch-free helpers such as :mod:`anomaly_zoo.data.io` import without Lightning (``predict`` with an
exported model, :mod:`anomaly_zoo.export.runtime`).
"""

from anomaly_zoo.data import (  # noqa: F401
    bmad,
    btad,
    cifar10,
    cross_dataset,
    dtd_synthetic,
    folder,
    images,
    isic,
    medical_classification,
    mpdd,
    multi_dataset,
    mvtec_3d,
    mvtec_ad,
    mvtec_ad2,
    mvtec_loco,
    ped2,
    polyp,
    real_iad,
    rsdd,
    synthetic,
    visa,
)
