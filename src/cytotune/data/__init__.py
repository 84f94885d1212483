"""Data layer: readers, named layouts, splits, few-shot sampling, image decoding and caching.

The bottom layer of cytotune: it imports nothing else from the package. Every reader returns a
:class:`LabelledImages`; everything downstream works on that type and on decoded uint8 tensors.
"""
from cytotune.data.dataset import SPLIT_NAMES, DataError, LabelledImages
from cytotune.data.domains import DomainPools, domain_names, domain_pools, leave_one_domain_out
from cytotune.data.images import (INTERPOLATIONS, DecodedImages, ImageDecodeError, ImageStore,
                                  decode_images, decode_resized, load_rgb, resize_and_crop,
                                  to_rgb)
from cytotune.data.layouts import (LAYOUTS, Layout, load_dataset, read_bcfc, read_hicervix,
                                   read_mlcc, read_sipakmed)
from cytotune.data.readers import IMAGE_EXTENSIONS, list_images, read_csv, read_folder
from cytotune.data.sampling import few_shot, few_shot_multilabel, few_shot_validation, fraction
from cytotune.data.splits import SplitIndices, make_splits
from cytotune.data.synthetic import (DEFAULT_CLASSES, SYNTHETIC_LABELS, generate_cytology_dataset,
                                     write_synthetic_manifest)

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
