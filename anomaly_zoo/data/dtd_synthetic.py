"""DTD-Synthetic: 12 DTD textures with synthetic defects, in the MVTec AD layout."""

from __future__ import annotations

from anomaly_zoo.data.mvtec_style import MVTecStyleDataModule
from anomaly_zoo.registry import DATAMODULES


@DATAMODULES.register("dtd_synthetic")
class DTDSynthetic(MVTecStyleDataModule):
    """DTD-Synthetic (Aota et al., "Zero-shot versus many-shot", WACV 2023), the release extracted.

    Layout (MVTec AD's; texture names carry the DTD image number)::

        <root>/
        ├── Blotchy_099/
        │   ├── train/good/            000.png, …
        │   ├── test/good/             000.png, …
        │   ├── test/bad/              000.png, …
        │   └── ground_truth/bad/      000_mask.png, …
        ├── Fibrous_183/ Marbled_078/ Matted_069/ Mesh_114/ Perforated_037/ Stratified_154/
        └── Woven_001/ Woven_068/ Woven_104/ Woven_125/ Woven_127/

    Masks pair by stem (``000.png`` ↔ ``000_mask.png``; ``000.png`` alone is accepted too); binarised ``> 0``.
    Category names are case-sensitive as shipped (``Woven_001``).

    Args: see :class:`~anomaly_zoo.data.base.AnomalyDataModule`.
    """

    CATEGORIES = (
        "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
        "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
    )  # fmt: skip
    DATASET_NAME = "DTD-Synthetic"
    DOMAIN = "industrial"
    MASK_SUFFIXES = ("_mask", "")
