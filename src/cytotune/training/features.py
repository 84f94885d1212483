"""Frozen-backbone features, computed once and cached on disk.

The cache key covers everything that changes a feature vector: the card, a fingerprint of the
actual weights, the preprocessing, and the content of every image (via the image store's key).
A peer framework keys its cache on a folder path alone and serves stale embeddings after a
change of weights or transforms; this one cannot. Only clean (un-augmented) views are cached.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from cytotune.training.augment import normalise

log = logging.getLogger(__name__)


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """"fp32" or "bf16" for ``precision`` on ``device``. "auto" is bf16 on CUDA and fp32 on a
    CPU: CPU results stay those of plain fp32 unless bf16 is asked for. Asked for, bf16 on a CPU
    with native bf16 instructions (avx512_bf16, AMX) runs a ViT's forward about 2.7x faster on
    the project's machine (docs/performance.md); on other CPUs it is emulated and slower."""
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
                 device: torch.device, precision: str = "auto") -> tuple[torch.Tensor, float, bool]:
        """Clean features of ``pixels`` (the images behind ``images_key``) through a frozen
        ``backbone`` whose weights have ``weights_fingerprint``: from the cache, else extracted
        on ``device`` at ``precision`` and stored. Returns :meth:`get_or_compute`'s triple."""
        pre = backbone.preprocessing
        resolved = resolve_precision(device, precision)
        key = self.key(backbone.card.name, weights_fingerprint, pre.fingerprint(), images_key,
                       resolved)
        return self.get_or_compute(key, lambda: extract_features(
            backbone, pixels, pre.mean, pre.std, device, precision=resolved))

    def get_or_compute(self, key: str, compute) -> tuple[torch.Tensor, float, bool]:
        """(features, seconds spent computing (0 on a hit), whether it was a cache hit)."""
        path = self.cache_dir / f"{key}.safetensors" if self.cache_dir is not None else None
        if path is not None and path.exists():
            return load_file(str(path))["features"], 0.0, True
        start = time.perf_counter()
        feats = compute()
        elapsed = time.perf_counter() - start
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            try:
                save_file({"features": feats.contiguous()}, tmp, metadata={"key": key})
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return feats, elapsed, False
