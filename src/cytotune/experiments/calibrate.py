"""A short timing of a backbone on this machine, for a sweep's estimate when the store has no
past runs of it: a few forward passes (images embedded per second) and, for methods that train
the backbone, a few LoRA or full fine-tuning steps (training images per second), on random
tensors at the run's image size. Random weights (no download) cost the same time as trained
ones.

Results are cached per machine in ``calibration.json`` under the cache folder
(``$CYTOTUNE_CALIBRATION_DIR``, else ``$XDG_CACHE_HOME/cytotune`` or ``~/.cache/cytotune``),
keyed by backbone, kind (embed, lora, full), image size, device and torch version, so a second
dry run measures nothing. This file is the only thing a dry run writes; a cache folder that
cannot be written is skipped (the timing is then redone next time).
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CALIBRATION_FILE = "calibration.json"
MIN_STEPS = 3  # the first is not counted
MAX_STEPS = 12
BUDGET_S = 3.0  # per kind of work: a few seconds per backbone and method
MAX_PIXELS = 16 * 128 * 128  # a batch of at most 16 images of 128 px (fewer when larger):
# a per-image cost at a batch near the runs' own, in a few seconds


def calibration_dir() -> Path:
    """Where the per-machine calibration lives (see the module docstring)."""
    explicit = os.environ.get("CYTOTUNE_CALIBRATION_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "cytotune"


def machine_key(device: str) -> str:
    """The machine a timing holds for: host, CPU count, device (and GPU name), torch version."""
    import torch

    where = device
    if device == "cuda" and torch.cuda.is_available():
        where = f"cuda:{torch.cuda.get_device_name(0)}"
    return f"{platform.node()}|{os.cpu_count()}cpu|{where}|torch {torch.__version__}"


def calibration_key(backbone: str, kind: str, image_size: int, device: str) -> str:
    return f"{backbone}|{kind}|{image_size}px|{machine_key(device)}"


@dataclass
class Calibration:
    """Seconds per image of one kind of work (``kind``: embed, lora or full) and the fixed cost
    of building the model; ``cached``: read back, not measured now."""

    per_image_s: float
    build_s: float
    forward_per_image_s: float
    cached: bool = False


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, key: str, value: dict) -> Optional[str]:
    """Add ``key`` to the cache file atomically; the reason when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path)
        data[key] = value
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
        return None
    except OSError as err:
        return f"calibration not cached ({path.parent} not writable: {err.strerror or err})"


def measure(backbone: str, kind: str, image_size: int, device: str, batch: int) -> Calibration:
    """Time a few steps of ``kind`` on random tensors (see the module docstring)."""
    import torch

    from cytotune.adapters import apply_lora, mark_only_lora_trainable
    from cytotune.models.build import build_backbone
    from cytotune.training.config import LoRASettings

    batch = max(1, min(batch, MAX_PIXELS // (image_size * image_size)))
    start = time.perf_counter()
    bb = build_backbone(backbone, pretrained=False, device=device)
    if kind == "lora":
        apply_lora(bb.model, LoRASettings(rank=4, alpha=4.0).resolve(bb.card.default_lora_targets),
                   bb.card.lora_targets)
        mark_only_lora_trainable(bb.model)
        bb.to(device)
    build_s = time.perf_counter() - start
    pixels = torch.randn(batch, 3, image_size, image_size, device=device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(step) -> float:
        """Seconds per image of the fastest step after the first: other processes on a shared
        machine only ever slow a step down, and early steps pay one-off set-up costs (kernel
        selection, allocations), so steps go on for up to ``BUDGET_S`` seconds."""
        times: list[float] = []
        begun = time.perf_counter()
        while len(times) < MAX_STEPS and (len(times) < MIN_STEPS
                                          or time.perf_counter() - begun < BUDGET_S):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        return min(times[1:]) / batch

    def forward() -> None:
        with torch.no_grad():
            bb(pixels)

    forward_s = timed(forward)
    if kind == "embed":
        return Calibration(forward_s, build_s, forward_s)
    head = torch.nn.Linear(bb.feature_dim, 4).to(device)
    params = [p for p in bb.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    target = torch.randint(0, 4, (batch,), device=device)
    bb.train()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(head(bb(pixels)), target)
        loss.backward()
        opt.step()

    return Calibration(timed(train_step), build_s, forward_s)


def calibrate(backbone: str, kind: str, image_size: int, device: str, batch: int = 32,
              cache: Optional[Path] = None, notes: Optional[list[str]] = None,
              measure_now: bool = True) -> Calibration:
    """The cached timing of (``backbone``, ``kind``, ``image_size``, ``device``) on this machine,
    measured now when there is none (``measure_now=False``: LookupError instead). ``notes``
    receives a line when the cache is not written."""
    path = (cache if cache is not None else calibration_dir()) / CALIBRATION_FILE
    key = calibration_key(backbone, kind, image_size, device)
    found = _read(path).get(key)
    if isinstance(found, dict):
        try:
            return Calibration(float(found["per_image_s"]), float(found["build_s"]),
                               float(found["forward_per_image_s"]), cached=True)
        except (KeyError, TypeError, ValueError):
            pass  # a damaged entry: measured again
    if not measure_now:
        raise LookupError(f"no calibration of {key} in {path}")
    result = measure(backbone, kind, image_size, device, batch)
    why = _write(path, key, {"per_image_s": result.per_image_s, "build_s": result.build_s,
                             "forward_per_image_s": result.forward_per_image_s,
                             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if why and notes is not None and why not in notes:
        notes.append(why)
    return result
