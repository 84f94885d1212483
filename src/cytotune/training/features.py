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


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, nothing on CPU (CPU bf16 is slower there and changes results)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, pixels: torch.Tensor, mean, std,
                     device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """Pooled features of uint8 images (N,3,H,W) as float32 (N, D) on the CPU."""
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for start in range(0, pixels.shape[0], batch_size):
            batch = pixels[start:start + batch_size].to(device, non_blocking=True)
            with autocast_for(device):
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
            images_key: str) -> str:
        h = hashlib.blake2b(digest_size=16)
        for part in (card_name, weights_fingerprint, preprocessing_fingerprint, images_key):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()

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
