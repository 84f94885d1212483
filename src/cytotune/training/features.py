"""Frozen-backbone features, computed once and cached on disk.

The cache key covers everything that changes a feature vector: the card, a fingerprint of the
actual weights, the preprocessing, the precision, and the content of every image (via the image
store's keys). A peer framework keys its cache on a folder path alone and serves stale embeddings
after a change of weights or transforms; this one cannot. Features are held image by image, so
any set of images (another seed's few-shot sample, a larger fraction, a resumed sweep chunk)
extracts only the images not held yet. Only clean (un-augmented) views are cached.
"""
from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load as load_safetensors

from cytotune.data import cachefiles
from cytotune.training.feature_bank import DIGEST_FIELD, FeatureBank, save_atomic, tensors_digest
from cytotune.training.augment import normalise
from cytotune.training.config import PRECISIONS
from cytotune.training.progress import observer

log = logging.getLogger(__name__)


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """"fp32" or "bf16" for ``precision`` on ``device``. "auto" is bf16 on CUDA and fp32 on a
    CPU: CPU results stay those of plain fp32 unless bf16 is asked for. Asked for on the
    project's CPU (native bf16, avx512_bf16), a linear-probe grid ran about 2x faster and a LoRA
    run 1.4-1.8x (docs/performance.md); CPUs without native bf16 emulate it (not measured)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_for(device: torch.device, precision: str = "auto"):
    """bf16 autocast where :func:`resolve_precision` says bf16 (weights stay fp32), else nothing."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def fp32_head(head: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``head(features)`` in fp32 whatever autocast is active: the head's matmul costs nothing
    next to the backbone, and this way a linear probe (on cached float features), LoRA training
    and ``predict`` all compute their logits alike, under bf16 too."""
    with torch.autocast(features.device.type, enabled=False):
        return head(features.float())


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, pixels: torch.Tensor, mean, std,
                     device: torch.device, batch_size: int = 64,
                     precision: str = "auto") -> torch.Tensor:
    """Pooled features of uint8 images (N,3,H,W) as float32 (N, D) on the CPU."""
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for start in range(0, pixels.shape[0], batch_size):
            batch = pixels[start:start + batch_size].to(device, non_blocking=True)
            with autocast_for(device, precision):
                feats = backbone(normalise(batch, mean, std))
            out.append(feats.float().cpu())
            observer().advance(len(batch))
    finally:
        backbone.train(was_training)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


class FeatureCache:
    """Features on disk as safetensors, one file per (backbone weights, preprocessing, images)."""

    def __init__(self, cache_dir: Optional[Path]):
        self.cache_dir = Path(cache_dir) / "features" if cache_dir is not None else None

    @staticmethod
    def key(card_name: str, weights_fingerprint: str, preprocessing_fingerprint: str,
            images_key: str, precision: str = "fp32") -> str:
        """``precision``: resolved ("fp32" or "bf16"); bf16 features differ in the last bits."""
        h = hashlib.blake2b(digest_size=16)
        for part in (card_name, weights_fingerprint, preprocessing_fingerprint, images_key,
                     precision):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()

    def features(self, backbone, weights_fingerprint: str, pixels: torch.Tensor, images_key: str,
                 device: torch.device, precision: str = "auto",
                 image_keys: Sequence[str] = (),
                 batch_size: int = 64) -> tuple[torch.Tensor, float, bool]:
        """Clean features of ``pixels`` (the images behind ``images_key``) through a frozen
        ``backbone`` whose weights have ``weights_fingerprint``, at ``precision`` on ``device``.

        With ``image_keys`` (one content key per image) the cache is a bank per (backbone,
        weights, preprocessing, precision) holding features image by image: only images it does
        not hold yet are extracted, so a run on other shots, another seed's sample or a resumed
        sweep chunk reuses every image extracted before. Without them, one entry per set of
        images. ``batch_size``: images per forward pass when extracting. Returns ``(features,
        seconds extracting, whether nothing was extracted)``.
        """
        pre = backbone.preprocessing
        resolved = resolve_precision(device, precision)

        def extract(subset: torch.Tensor) -> torch.Tensor:
            return extract_features(backbone, subset, pre.mean, pre.std, device, batch_size,
                                    precision=resolved)

        if self.cache_dir is None or len(image_keys) != len(pixels) or not len(pixels):
            key = self.key(backbone.card.name, weights_fingerprint, pre.fingerprint(), images_key,
                           resolved)
            feats, seconds, hit = self.get_or_compute(key, lambda: extract(pixels))
            if hit:  # extraction reports its own batches
                observer().reused(len(pixels))
            return feats, seconds, hit
        bank = self.cache_dir / self.key(backbone.card.name, weights_fingerprint,
                                         pre.fingerprint(), "per-image bank", resolved)
        return FeatureBank(bank).features(list(image_keys), pixels, extract, observer().reused)

    def held(self, backbone, weights_fingerprint: str, device: torch.device,
             precision: str, image_keys: Sequence[str]) -> Optional[torch.Tensor]:
        """The per-image features of ``image_keys`` when the bank of this backbone, weights,
        preprocessing and precision holds all of them, else None; extracts nothing."""
        if self.cache_dir is None or not len(image_keys):
            return None
        pre = backbone.preprocessing
        bank = self.cache_dir / self.key(backbone.card.name, weights_fingerprint,
                                         pre.fingerprint(), "per-image bank",
                                         resolve_precision(device, precision))
        return FeatureBank(bank).held(list(image_keys))

    def get_or_compute(self, key: str, compute) -> tuple[torch.Tensor, float, bool]:
        """(features, seconds spent computing (0 on a hit), whether it was a cache hit)."""
        path = self.cache_dir / f"{key}.safetensors" if self.cache_dir is not None else None
        if path is not None and path.exists():
            tensors = read_checked(path, "feature cache entry")
            if tensors is not None and "features" in tensors:
                return tensors["features"], 0.0, True
        start = time.perf_counter()
        feats = compute()
        elapsed = time.perf_counter() - start
        if path is not None:
            save_atomic({"features": feats.contiguous()}, path, metadata={"key": key})
        return feats, elapsed, False


def check_features_file(path: Path) -> tuple[Optional[dict[str, torch.Tensor]], Optional[str]]:
    """``(tensors, None)`` when the safetensors file at ``path`` holds the tensors whose digest
    its metadata records (always hashed: features are small next to their extraction), else
    ``(None, why not)``; OSError when it cannot be read at all."""
    data = path.read_bytes()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8:8 + length]).get("__metadata__") or {}
        tensors = load_safetensors(data)
    except Exception as err:  # noqa: BLE001 - any parse failure means a damaged file
        return None, f"is not a readable safetensors file ({err})"
    recorded = metadata.get(DIGEST_FIELD)
    if not isinstance(recorded, str) or ":" not in recorded:
        return None, "has no content digest (written by an older cytotune)"
    if cachefiles.verify_mode() == "off":
        return tensors, None
    try:
        with cachefiles.timed_check():
            actual = tensors_digest(tensors, recorded.split(":", 1)[0])
    except ValueError as err:
        return None, f"records an unusable digest ({err})"
    if actual != recorded:
        return None, "does not match the digest recorded when it was written (changed or " \
                     "damaged on disk)"
    return tensors, None


def read_checked(path: Path, what: str) -> Optional[dict[str, torch.Tensor]]:
    """The tensors of the cache file ``path``, or None (with a warning naming it) when it is
    unreadable or fails its content check; a file that fails the check is removed."""
    try:
        tensors, problem = check_features_file(path)
    except OSError as err:
        log.warning("ignoring unusable %s %s (%s)", what, path, err.strerror or err)
        return None
    if problem is not None:
        cachefiles.discard([path], what, problem)
        return None
    return tensors
