"""The fixed prompt ensemble and the hand-written class descriptions of MoECLIP (text side, §3.1).

``CLASS_DESCRIPTIONS`` is data taken from the authors' repository (github CoCoRessa/MoECLIP @ 8783e5c,
``dataset/constants.py``, ``REAL_NAMES``; inherited from AA-CLIP), flattened over their datasets: category
folder name → the description put into the prompts. Categories not in the table use their own name with
underscores as spaces (e.g. MPDD's ``bracket_black`` → "bracket black"); ``class_descriptions`` in the model
overrides or extends it.
"""

from __future__ import annotations

from collections.abc import Mapping

NORMAL_STATES: tuple[str, ...] = ("{}", "a {}", "the {}")
ANOMALOUS_STATES: tuple[str, ...] = ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage")
TEMPLATES: tuple[str, ...] = ("{}.", "a photo of {}.")

CLASS_DESCRIPTIONS: dict[str, str] = {
    # headct
    'headct': 'scan',
    # Brain
    'Brain': 'scan',
    # Liver
    'Liver': 'scan',
    # Retina
    'Retina': 'scan',
    # RSDD
    'RSDD': 'metal',
    # DTD-Synthetic
    'Blotchy': 'Blotchy',
    'Fibrous': 'Fibrous',
    'Marbled': 'Marbled',
    'Matted': 'Matted',
    'Mesh': 'Mesh',
    'Perforated': 'Perforated',
    'Stratified': 'Stratified',
    'Woven': 'Woven',
    # Endo
    'Endo': 'polyp',
    # MVTec
    'bottle': 'dark bottle',
    'cable': 'top view of three cables',
    'capsule': 'black asd orange capsule',
    'carpet': 'gray carpet',
    'grid': 'metal or plastic mesh',
    'hazelnut': 'single brown hazelnut',
    'leather': 'brown leather',
    'metal_nut': 'metal nut which has four notched edges',
    'pill': "oval white pill with small red speckles and the letters 'FF' engraved",
    'screw': 'screw',
    'tile': 'speckled tile surface',
    'transistor': 'a three-legged transistor placed vertically',
    'toothbrush': 'toothbrush head',
    'wood': 'wood surface',
    'zipper': 'a black zipper',
    # VisA
    'candle': 'candle',
    'pcb3': 'infrared sensor pcb module',
    'capsules': 'capsules',
    'pipe_fryum': 'pipe-shaped fryum',
    'pcb4': 'battery charging pcb module',
    'macaroni2': 'scattered yellow macaroni',
    'pcb2': 'integrated circuits board',
    'chewinggum': 'chewing gum',
    'macaroni1': 'orange macaroni',
    'cashew': 'cashew nut',
    'fryum': 'wheel-shaped fryum snack',
    'pcb1': 'dual ultrasonic distance sensor pcb module',
    # Colon_clinicDB
    'Colon_clinicDB': 'colon endoscopy image',
    # Colon_colonDB
    'Colon_colonDB': 'colon endoscopy image',
    # Colon_cvc300
    'CVC-300': 'colon endoscopy image',
    # Colon_Kvasir
    'Kvasir': 'colon endoscopy image',
    # BTAD
    '01': 'Bright concentric rings in neon yellow and blue tones against a dark blue background, resembling a stylized wave or energy field radiating outward.',
    '02': 'vertical fabric lines in warm, dusty pink and beige tones',
    '03': 'oval concentric circular rings in gradient shades of blue and white',
}


def class_description(category: str, overrides: Mapping[str, str] | None = None) -> str:
    """The description of ``category`` (a dataset-qualified ``"mvtec_ad/bottle"`` uses its last part)."""
    for name in (category, category.rsplit("/", 1)[-1]):
        if overrides and name in overrides:
            return overrides[name]
        if name in CLASS_DESCRIPTIONS:
            return CLASS_DESCRIPTIONS[name]
    return category.rsplit("/", 1)[-1].replace("_", " ")


def prompt_sentences(description: str) -> tuple[list[str], list[str]]:
    """(normal, anomalous) sentences: every state × every template, state-major (6 + 10 for the defaults)."""
    def expand(states: tuple[str, ...]) -> list[str]:
        return [template.format(state.format(description)) for state in states for template in TEMPLATES]

    return expand(NORMAL_STATES), expand(ANOMALOUS_STATES)
