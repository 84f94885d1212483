"""Class prompts for vision-language models: descriptive class names and prompt templates.

A vision-language model scores an image against sentences, not label ids, so each data set's
classes get a descriptive name ("high-grade squamous intraepithelial lesion" for ``HSIL``) and a
few templates ("a cytology image of {}."); the prompts of a class are its name put into every
template (their embeddings are averaged: prompt ensembling). Defaults are keyed by layout and
class (folder) name; a run's YAML overrides them (``data.prompts``). Folders and CSVs without a
named layout fall back to the class name with underscores and hyphens read as spaces.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from cytotune.data.dataset import DataError

CYTOLOGY_TEMPLATES: tuple[str, ...] = (
    "a cytology image of {}.",
    "a microscopy image of {}.",
    "a Pap smear image of {}.",
    "a photomicrograph of {}.",
)


@dataclass(frozen=True)
class ClassPrompts:
    """Descriptive names per class (folder) name, and the templates they are put into."""

    class_names: Mapping[str, str] = field(default_factory=dict)
    templates: tuple[str, ...] = CYTOLOGY_TEMPLATES


# Body Cavity Fluid Cytology: effusion cytology, benign vs malignant cells
BCFC_PROMPTS = ClassPrompts(
    class_names={"benign": "benign cells in a body cavity fluid",
                 "malignant": "malignant tumour cells in a body cavity fluid"},
    templates=("a cytology image of {}.", "a microscopy image of {}.",
               "an effusion cytology image of {}.", "a photomicrograph of {}."))

# Mendeley LBC (the data set's README gives these expansions): Bethesda categories
MLCC_PROMPTS = ClassPrompts(class_names={
    "HSIL": "high-grade squamous intraepithelial lesion",
    "LSIL": "low-grade squamous intraepithelial lesion",
    "NL": "normal cervical cells negative for intraepithelial lesion or malignancy",
    "SCC": "squamous cell carcinoma",
})

# SIPaKMeD's five cell types (Plissiti et al. 2018): two normal, two abnormal, one benign
SIPAKMED_PROMPTS = ClassPrompts(class_names={
    "Dyskeratotic": "a dyskeratotic squamous cell",
    "Koilocytotic": "a koilocytotic squamous cell",
    "Metaplastic": "a metaplastic squamous cell",
    "Parabasal": "a parabasal squamous cell",
    "Superficial-Intermediate": "a superficial or intermediate squamous cell",
})

# HiCervix, all three levels of its tree (level 1: negative, ASC, AGC, microbe). The long forms
# follow the data set's own hierarchy_names.csv; "microbe" is its node for organisms, and the
# level-1 "ASC"/"AGC" nodes are read as squamous/glandular abnormalities (our reading).
HICERVIX_PROMPTS = ClassPrompts(class_names={
    "negative": "cervical cells negative for intraepithelial lesion or malignancy",
    "ASC": "an abnormal squamous epithelial cell",
    "AGC": "an atypical glandular cell",
    "microbe": "microorganisms in a cervical smear",
    "Normal": "a normal cervical cell",
    "ECC": "an endocervical cell",
    "RPC": "a repair cell",
    "MPC": "a metaplastic cell",
    "PG": "a pseudokoilocyte caused by glycogen",
    "Atrophy": "atrophic cervical cells",
    "EMC": "an endometrial cell",
    "HCG": "a hyperchromatic crowded group of cells",
    "ASC-US": "atypical squamous cells of undetermined significance",
    "LSIL": "a low-grade squamous intraepithelial lesion",
    "ASC-H": "atypical squamous cells that cannot exclude a high-grade squamous "
             "intraepithelial lesion",
    "HSIL": "a high-grade squamous intraepithelial lesion",
    "SCC": "squamous cell carcinoma",
    "AGC-NOS": "an atypical glandular cell, not otherwise specified",
    "AGC-FN": "an atypical glandular cell, favour neoplastic",
    "ADC": "adenocarcinoma",
    "AGC-ECC-NOS": "an atypical endocervical glandular cell, not otherwise specified",
    "AGC-EMC-NOS": "an atypical endometrial glandular cell, not otherwise specified",
    "ADC-ECC": "endocervical adenocarcinoma",
    "ADC-EMC": "endometrial adenocarcinoma",
    "FUNGI": "fungal organisms consistent with Candida",
    "ACTINO": "bacteria consistent with Actinomyces",
    "TRI": "Trichomonas vaginalis",
    "HSV": "cellular changes consistent with herpes simplex virus",
    "CC": "coccobacilli suggestive of bacterial vaginosis",
})

DEFAULT_PROMPTS: dict[str, ClassPrompts] = {
    "bcfc": BCFC_PROMPTS, "mlcc": MLCC_PROMPTS, "sipakmed": SIPAKMED_PROMPTS,
    "hicervix": HICERVIX_PROMPTS,
}


def plain_name(class_name: str) -> str:
    """The fallback descriptive name: ``"clear_cell"`` -> ``"clear cell"``."""
    return " ".join(class_name.replace("_", " ").split())


def class_prompts(class_names: Sequence[str], layout: Optional[str] = None,
                  names: Optional[Mapping[str, str]] = None,
                  templates: Optional[Sequence[str]] = None) -> list[list[str]]:
    """One list of prompts per class, in ``class_names`` order.

    ``names`` and ``templates`` override the layout's defaults (a name given for a class the
    data set does not have is an error, to catch typos); every template needs one ``{}``.
    """
    default = DEFAULT_PROMPTS.get((layout or "").lower(), ClassPrompts())
    names = dict(names or {})
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise DataError(f"data.prompts.class_names names classes {unknown} that the data set does "
                        f"not have; its classes are {list(class_names)}")
    templates = tuple(templates) if templates else tuple(default.templates)
    if not templates:
        raise DataError("data.prompts.templates is empty; give at least one template with {}")
    for template in templates:
        if template.count("{}") != 1:
            raise DataError(f"prompt template {template!r} must contain '{{}}' exactly once "
                            f"(where the class name goes)")
    out = []
    for name in class_names:
        described = names.get(name) or default.class_names.get(name) or plain_name(name)
        out.append([template.format(described) for template in templates])
    return out
