"""Importing this package registers every DataModule in ``anomaly_zoo.registry.DATAMODULES``."""

from anomaly_zoo.data import btad, cifar10, cross_dataset, folder, mpdd, mvtec_ad, mvtec_loco, synthetic, visa  # noqa: F401
from anomaly_zoo.data import multi_dataset  # noqa: F401
from anomaly_zoo.data import bmad  # noqa: F401
from anomaly_zoo.data import dtd_synthetic  # noqa: F401
from anomaly_zoo.data import isic  # noqa: F401
from anomaly_zoo.data import medical_classification  # noqa: F401
from anomaly_zoo.data import mvtec_3d  # noqa: F401
from anomaly_zoo.data import mvtec_ad2  # noqa: F401
from anomaly_zoo.data import ped2  # noqa: F401
from anomaly_zoo.data import polyp  # noqa: F401
from anomaly_zoo.data import real_iad  # noqa: F401
from anomaly_zoo.data import rsdd  # noqa: F401
from anomaly_zoo.data import images  # noqa: F401
from anomaly_zoo.data.base import AnomalyDataModule
from anomaly_zoo.data.dataset import AnomalyDataset, Sample
from anomaly_zoo.data.errors import DatasetError

__all__ = ["AnomalyDataModule", "AnomalyDataset", "DatasetError", "Sample"]
