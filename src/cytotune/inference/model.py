"""A trained run as one ready ``torch.nn.Module``: ``cytotune.load(run_dir)``.

    model = cytotune.load("runs/x")              # LoRA merged into the base weights, eval mode
    model.class_names, model.preprocessing       # what it predicts, how images must be prepared
    out = model.predict(["a.png", pil_image])    # paths, PIL images or uint8 tensors
    out.probs, out.predicted, out.to_frame()
    logits = model(normalised_batch)             # the plain module: (B, 3, S, S) floats -> logits
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from cytotune.data.images import load_rgb, resize_and_crop, to_rgb
from cytotune.inference.run import RunFiles, build_merged_backbone, load_head, read_run
from cytotune.models import Preprocessing
from cytotune.training.augment import normalise
from cytotune.training.features import autocast_for, fp32_head, resolve_precision
from cytotune.training.runner import resolve_device
from cytotune.training.task import MULTI_LABEL, Task, task_for

ImageLike = Union[str, Path, Image.Image, torch.Tensor, np.ndarray]
log = logging.getLogger("cytotune")


@dataclass
class Predictions:
    """Class probabilities of a batch of images, in input order."""

    probs: torch.Tensor  # float32 (N, C), CPU
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    @property
    def indices(self) -> list[int]:
        return self.probs.argmax(-1).tolist() if len(self) else []

    @property
    def predicted(self) -> list[str]:
        return [self.class_names[i] for i in self.indices]

    def labels_above(self, threshold: float = 0.5) -> list[str]:
        """Multi-label runs: each image's labels with probability >= ``threshold``, "|"-joined."""
        return ["|".join(n for n, p in zip(self.class_names, row) if p >= threshold)
                for row in self.probs.tolist()]

    def to_frame(self) -> pd.DataFrame:
        """``predicted`` plus one ``prob_<class>`` column per class (as a run's predictions.csv)."""
        frame = pd.DataFrame({"predicted": self.predicted})
        probs = self.probs.numpy()
        for c, name in enumerate(self.class_names):
            frame[f"prob_{name}"] = probs[:, c] if len(self) else []
        return frame


class CytotuneModel(nn.Module):
    """Backbone (LoRA merged) followed by the run's linear head.

    ``forward`` takes normalised float pixels (B, 3, S, S) (``preprocessing``: resize the shorter
    side to ``resize_size``, center-crop ``image_size``, scale to [0, 1], subtract ``mean``, divide
    by ``std``) and returns logits; :meth:`predict` does all of that from image files, PIL images
    or uint8 tensors. Attributes: ``class_names``, ``preprocessing``, ``card`` (the model card),
    ``config`` (the run's TrainConfig), ``metrics`` (its metrics.json), ``run_dir``, ``stain``
    (the run's fitted stain normalisation, from its stain.json, or None): :meth:`preprocess`
    applies it after the resize and crop, as training's decode did.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, run: RunFiles):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.class_names: list[str] = list(run.class_names)
        self.preprocessing: Preprocessing = backbone.preprocessing
        self.card = backbone.card
        self.config = run.config
        self.metrics: dict[str, Any] = run.metrics
        self.run_dir: Path = run.path
        # multi-label runs (metrics.json "task") give one sigmoid per label instead of a softmax
        self.task: Task = task_for(run.metrics.get("task") == MULTI_LABEL.name)
        # autocast precision of predict(): the run's setting ("auto": bf16 on CUDA, fp32 on a
        # CPU, on the device the model is on now); "fp32" or "bf16" to override
        self.precision: str = run.config.precision
        self.stain = run.stain

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return fp32_head(self.head, self.backbone(pixels))

    # -- images -> uint8 tensors -------------------------------------------------------------
    def _resize(self, image: Image.Image) -> torch.Tensor:
        pre = self.preprocessing
        array = resize_and_crop(to_rgb(image), pre.effective_resize, pre.image_size,
                                pre.interpolation)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def _one(self, image: ImageLike) -> torch.Tensor:
        size = self.preprocessing.image_size
        if isinstance(image, (str, Path)):
            return self._resize(load_rgb(image))
        if isinstance(image, Image.Image):
            return self._resize(image)
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8:
                raise TypeError(f"predict() takes uint8 image tensors (0..255), got {image.dtype}; "
                                f"for normalised float batches call the model itself")
            if image.dim() == 3 and image.shape[0] in (1, 3) and image.shape[0] != image.shape[-1]:
                chw = image
            elif image.dim() == 3 and image.shape[-1] in (1, 3):  # (H, W, C) as numpy has it
                chw = image.permute(2, 0, 1)
            elif image.dim() == 2:
                chw = image.unsqueeze(0)
            else:
                raise ValueError(f"an image tensor must be (3, H, W), (H, W, 3) or (H, W); got "
                                 f"shape {tuple(image.shape)}")
            chw = chw.expand(3, -1, -1) if chw.shape[0] == 1 else chw
            if tuple(chw.shape[-2:]) == (size, size):
                return chw.cpu().contiguous()  # already at the model's input size
            return self._resize(Image.fromarray(chw.permute(1, 2, 0).cpu().numpy()))
        raise TypeError(f"cannot predict on a {type(image).__name__}: pass a path, a PIL image or "
                        f"a uint8 tensor")

    def preprocess(self, images: Union[ImageLike, Sequence[ImageLike]]) -> torch.Tensor:
        """uint8 (N, 3, S, S) pixels, resized and cropped exactly as training decoded its images."""
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            items: Iterable[ImageLike] = list(images)
        elif isinstance(images, (str, Path, Image.Image, torch.Tensor, np.ndarray)):
            items = [images]
        else:
            items = list(images)
        pre = self.preprocessing
        tensors = [self._one(image) for image in items]
        if not tensors:
            return torch.empty(0, 3, pre.image_size, pre.image_size, dtype=torch.uint8)
        if self.stain is not None:
            tensors = self.normalise_stain(tensors)
        return torch.stack(tensors)

    def normalise_stain(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The run's stain normalisation on each (3, S, S) image; an image it cannot handle is
        kept as it is, and such images are counted in one warning."""
        out, failed = [], 0
        for chw in tensors:
            changed = self.stain(np.ascontiguousarray(chw.permute(1, 2, 0).numpy()))
            if changed is None:
                failed += 1
                out.append(chw)
            else:
                out.append(torch.from_numpy(np.ascontiguousarray(changed.transpose(2, 0, 1))))
        if failed:
            log.warning("stain normalisation (%s) could not be applied to %d of %d images (too "
                        "little stain); they are predicted unnormalised", self.stain.method,
                        failed, len(tensors))
        return out

    # -- prediction -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_pixels(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Probabilities (N, C), float32 on the CPU, of uint8 (N, 3, S, S) pixels as
        :meth:`preprocess` gives them (stain-normalised when the run was) (softmax over
        classes; for a multi-label run one sigmoid per label).

        Batched; at :attr:`precision` (the run's setting unless overridden: bf16 autocast on
        CUDA by default, fp32 on a CPU).
        """
        was_training = self.training
        self.eval()
        device = self.device
        pre = self.preprocessing
        out = []
        try:
            for start in range(0, pixels.shape[0], batch_size):
                batch = pixels[start:start + batch_size].to(device, non_blocking=True)
                with autocast_for(device, self.precision):
                    logits = self(normalise(batch, pre.mean, pre.std))
                out.append(self.task.probabilities(logits).cpu())
        finally:
            self.train(was_training)
        if not out:
            return torch.empty(0, self.num_classes)
        return torch.cat(out)

    def predict(self, images: Union[ImageLike, Sequence[ImageLike]],
                batch_size: int = 64) -> Predictions:
        """Class probabilities of image files, PIL images or uint8 tensors (one or a list, or a
        (B, 3, H, W) uint8 batch). An unreadable file raises ``ImageDecodeError`` naming it."""
        return Predictions(self.predict_pixels(self.preprocess(images), batch_size),
                           list(self.class_names))

    def extra_repr(self) -> str:
        return (f"run={str(self.run_dir)!r}, model={self.card.name!r}, "
                f"method={self.config.method!r}, classes={self.class_names}")


def load(run_dir: Union[str, Path], device: Union[str, torch.device] = "cpu",
         precision: Optional[str] = None) -> CytotuneModel:
    """The model a run trained, ready for inference: backbone rebuilt as training built it, LoRA
    adapter checked and merged into the base weights, head checked against the class names and
    the feature width. ``device``: "cpu", "cuda", "cuda:N" or "auto". ``precision``: predict's
    autocast ("auto", "fp32", "bf16"); None: the run's own setting."""
    if precision is not None:
        resolve_precision(torch.device("cpu"), precision)  # a bad value fails before the build
    return load_run(read_run(run_dir), device=device, precision=precision)


def load_run(run: RunFiles, device: Union[str, torch.device] = "cpu",
             precision: Optional[str] = None) -> CytotuneModel:
    """:func:`load` of a run already read (and its files' digests checked) by ``read_run``:
    ``predict`` reads the run first, to fail before listing images, and need not hash its
    weights twice."""
    if precision is not None:
        resolve_precision(torch.device("cpu"), precision)
    backbone = build_merged_backbone(run)
    head = load_head(run, backbone.feature_dim)
    model = CytotuneModel(backbone, head, run).eval()
    if precision is not None:
        model.precision = precision
    for p in model.parameters():
        p.requires_grad_(False)
    target = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    return model.to(target)
