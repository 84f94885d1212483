"""Data layer: readers, named layouts, splits, few-shot sampling, image decoding and caching.

The bottom layer of cytotune: it imports nothing else from the package. Every reader returns a
:class:`LabelledImages`; everything downstream works on that type and on decoded uint8 tensors.
"""
from typing import TYPE_CHECKING

from cytotune._lazy import lazy_exports

if TYPE_CHECKING:  # the real imports, for type checkers; at run time each name is
    # imported on first use, so a light part does not pull in torch through the rest
    from cytotune.data.dataset import SPLIT_NAMES, DataError, LabelledImages
    from cytotune.data.domains import DomainPools, domain_names, domain_pools, leave_one_domain_out
    from cytotune.data.image_store import ImageStore
    from cytotune.data.images import (INTERPOLATIONS, DecodedImages, ImageDecodeError,
                                      decode_images, decode_resized, load_rgb, resize_and_crop,
                                      to_rgb)
    from cytotune.data.layouts import (LAYOUTS, Layout, load_dataset, read_bcfc, read_hicervix,
                                       read_mlcc, read_sipakmed)
    from cytotune.data.readers import IMAGE_EXTENSIONS, list_images, read_folder
    from cytotune.data.tables import read_csv
    from cytotune.data.sampling import few_shot, few_shot_multilabel, few_shot_validation, fraction
    from cytotune.data.splits import SplitIndices, make_splits
    from cytotune.data.synthetic import (DEFAULT_CLASSES, SYNTHETIC_LABELS, generate_cytology_dataset,
                                         write_synthetic_manifest)

_EXPORTS = {
    "SPLIT_NAMES": "cytotune.data.dataset",
    "DataError": "cytotune.data.dataset",
    "LabelledImages": "cytotune.data.dataset",
    "DomainPools": "cytotune.data.domains",
    "domain_names": "cytotune.data.domains",
    "domain_pools": "cytotune.data.domains",
    "leave_one_domain_out": "cytotune.data.domains",
    "INTERPOLATIONS": "cytotune.data.images",
    "DecodedImages": "cytotune.data.images",
    "ImageDecodeError": "cytotune.data.images",
    "ImageStore": "cytotune.data.image_store",
    "decode_images": "cytotune.data.images",
    "decode_resized": "cytotune.data.images",
    "load_rgb": "cytotune.data.images",
    "resize_and_crop": "cytotune.data.images",
    "to_rgb": "cytotune.data.images",
    "LAYOUTS": "cytotune.data.layouts",
    "Layout": "cytotune.data.layouts",
    "load_dataset": "cytotune.data.layouts",
    "read_bcfc": "cytotune.data.layouts",
    "read_hicervix": "cytotune.data.layouts",
    "read_mlcc": "cytotune.data.layouts",
    "read_sipakmed": "cytotune.data.layouts",
    "IMAGE_EXTENSIONS": "cytotune.data.readers",
    "list_images": "cytotune.data.readers",
    "read_csv": "cytotune.data.tables",
    "read_folder": "cytotune.data.readers",
    "few_shot": "cytotune.data.sampling",
    "few_shot_multilabel": "cytotune.data.sampling",
    "few_shot_validation": "cytotune.data.sampling",
    "fraction": "cytotune.data.sampling",
    "SplitIndices": "cytotune.data.splits",
    "make_splits": "cytotune.data.splits",
    "DEFAULT_CLASSES": "cytotune.data.synthetic",
    "SYNTHETIC_LABELS": "cytotune.data.synthetic",
    "generate_cytology_dataset": "cytotune.data.synthetic",
    "write_synthetic_manifest": "cytotune.data.synthetic",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "DEFAULT_CLASSES", "IMAGE_EXTENSIONS", "INTERPOLATIONS", "LAYOUTS", "SPLIT_NAMES",
    "DataError", "DecodedImages", "ImageDecodeError", "ImageStore", "LabelledImages", "Layout",
    "SplitIndices", "decode_images", "decode_resized", "few_shot", "few_shot_validation",
    "fraction", "generate_cytology_dataset", "list_images", "load_dataset", "load_rgb",
    "make_splits", "read_bcfc", "read_csv", "read_folder", "read_hicervix", "read_mlcc",
    "read_sipakmed", "resize_and_crop", "to_rgb",
    "SYNTHETIC_LABELS", "write_synthetic_manifest",
    "DomainPools", "domain_names", "domain_pools", "leave_one_domain_out", "few_shot_multilabel",
]
