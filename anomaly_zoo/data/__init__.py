"""Importing this package registers every DataModule in ``anomaly_zoo.registry.DATAMODULES``."""

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
from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.errors import DatasetError

__all__ = ["AnomalyDataModule", "AnomalyDataset", "DatasetError", "Sample"]
