"""Stain and acquisition perturbations of uint8 image batches: one set of pure tensor functions
shared by training augmentation (random strength, ``cytotune.training.augment``) and the
robustness evaluation (fixed strength per severity, :func:`perturb`).

A slide from another lab differs in stain (haematoxylin/eosin uptake, staining time), scanner
(colour response, focus, JPEG archive, magnification) and exposure. Each function here models one
of those on a (B, 3, H, W) batch; the building blocks work on float images in [0, 1] so a
training pipeline rounds to uint8 once, and :func:`perturb` wraps them for uint8 in, uint8 out.

The robustness contract (used by ``cytotune robustness``; keep it stable):

- :data:`PERTURBATIONS`, :data:`SEVERITIES`, :func:`perturb`, :func:`severity_description`.
- Severity 0 returns the input unchanged. Severities 1-5 have a fixed strength (table below);
  the only randomness (the direction of an HED or brightness shift, the noise pattern) comes from
  a generator seeded by a SHA-256 hash of (image id, kind), so an image gets the same perturbed
  pixels in every process and run, whatever batch it sits in (each image is processed on its own
  for that reason). The severity is deliberately left out of the seed: an image keeps its shift
  direction and noise pattern and only the magnitude grows, so every image changes monotonically
  with severity (with a fresh direction per severity, a brightening at severity 5 that saturates
  the white background changed an image less than a darkening at severity 4).

========== =================================== ===== ===== ===== ===== =====
kind       strength at severity                    1     2     3     4     5
========== =================================== ===== ===== ===== ===== =====
hed        s: HED scale 1 +/- s, shift +/- s   0.005 0.01  0.02  0.035 0.05
blur       Gaussian sigma (px)                 0.5   1.0   1.5   2.5   4.0
jpeg       JPEG quality (Pillow/libjpeg)       80    60    40    20    10
noise      Gaussian noise std (of 255)         3     6     10    16    25
scale      down-and-up factor (side kept)      0.75  0.5   0.35  0.25  0.15
brightness gain 1 +/- g                        0.1   0.2   0.3   0.45  0.6
========== =================================== ===== ===== ===== ===== =====

HED values are in ``skimage.color.rgb2hed`` units (optical density divided by -ln(1e-6)); the
shift of s = 0.05 is the upper end of Tellez et al. (2019)'s "HED-light" augmentation.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

# the kinds and severities (named apart, so configs can list them without torch)
from cytotune.data.perturb_kinds import PERTURBATIONS, SEVERITIES  # noqa: E402

# fixed strength of severities 1..5 per kind (index 0 is severity 1); see the module table
STRENGTHS: dict[str, tuple[float, ...]] = {
    "hed": (0.005, 0.01, 0.02, 0.035, 0.05),
    "blur": (0.5, 1.0, 1.5, 2.5, 4.0),
    "jpeg": (80, 60, 40, 20, 10),
    "noise": (3.0, 6.0, 10.0, 16.0, 25.0),
    "scale": (0.75, 0.5, 0.35, 0.25, 0.15),
    "brightness": (0.1, 0.2, 0.3, 0.45, 0.6),
}
_DESCRIBE = {
    "hed": "HED scale 1±{v:g}, shift ±{v:g}",
    "blur": "blur sigma {v:g} px",
    "jpeg": "JPEG quality {v:g}",
    "noise": "Gaussian noise std {v:g}/255",
    "scale": "down-and-up scaling to {v:g}x",
    "brightness": "brightness gain 1±{v:g}",
}

# Ruifrok & Johnston (2001) stain vectors, as skimage.color.rgb_from_hed (rows: H, E, DAB)
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]],
                            dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = math.log(1e-6)  # skimage's scale: -ln(1e-6) optical density is 1.0

Factor = Union[float, torch.Tensor]


# ---- colour space ------------------------------------------------------------------------------
def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Channel mixing ``x @ matrix`` along the channel axis (-3) of a (..., 3, H, W) tensor (one
    batched matmul over the pixels)."""
    m = matrix.to(device=x.device, dtype=x.dtype)
    flat = x.reshape(-1, 3, x.shape[-2] * x.shape[-1])
    return torch.matmul(m.transpose(-1, -2), flat).reshape(x.shape)


def rgb_to_hed(x: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """RGB float in [0, 1], channels at axis -3 -> haematoxylin, eosin, DAB (skimage's rgb2hed).

    ``clip`` sets negative stain amounts to 0 as skimage does; the jitter keeps them
    (``clip=False``) so that scale 1 and shift 0 give back the input image.
    """
    od = torch.log(x.clamp(min=1e-6)) / _LOG_ADJUST
    hed = _mix(od, HED_FROM_RGB)
    return hed.clamp(min=0) if clip else hed


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed` (skimage's hed2rgb): stains -> RGB float in [0, 1]."""
    log_rgb = _mix(hed * _LOG_ADJUST, RGB_FROM_HED)
    return torch.exp(log_rgb).clamp(0, 1)


# ---- building blocks on float images in [0, 1] -------------------------------------------------
def _per_channel(value: Factor, n: int) -> torch.Tensor:
    """A scalar, (B,) or (B, 3) factor as a (B, 3) float64 CPU tensor."""
    t = torch.as_tensor(value, dtype=torch.float64).cpu()
    return (t.reshape(-1, 1) if t.ndim < 2 else t).expand(n, 3)


def hed_jitter(x: torch.Tensor, alpha: Factor, beta: Factor,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Tellez et al. (2019) stain jitter: HED channels scaled by ``alpha`` and shifted by ``beta``
    (scalars, (B,) or (B, 3) per image and channel), i.e. ``hed_to_rgb(rgb_to_hed(x) * alpha +
    beta)`` without skimage's clip of negative stains (so scale 1 and shift 0 give back the
    image). Both conversions are linear in log space, so the whole jitter is one 3x3 matrix and
    an offset per image on log RGB. Computed in ``dtype``: float64 for the robustness
    evaluation; training passes float32 (faster, within 1e-5)."""
    b = x.shape[0]
    a, shift = _per_channel(alpha, b), _per_channel(beta, b)
    # row-vector convention as skimage: log_rgb' = log_rgb @ H diag(a) R + LOG * (shift @ R)
    matrix = HED_FROM_RGB @ torch.diag_embed(a) @ RGB_FROM_HED  # (B, 3, 3)
    offset = _LOG_ADJUST * shift @ RGB_FROM_HED  # (B, 3)
    log_rgb = x.to(dtype).clamp(min=1e-6).log_().reshape(b, 3, -1)
    out = torch.baddbmm(offset.to(log_rgb).unsqueeze(-1), matrix.transpose(-1, -2).to(log_rgb),
                        log_rgb)
    return out.exp_().clamp_(0, 1).reshape(x.shape).to(x.dtype)


def brightness(x: torch.Tensor, gain: Factor) -> torch.Tensor:
    """Exposure: every pixel times ``gain`` (kornia's multiplicative adjust_contrast)."""
    from kornia.enhance import adjust_contrast
    return adjust_contrast(x, torch.as_tensor(gain, dtype=x.dtype, device=x.device))


# RGB -> YIQ (NTSC): Y is the luma torchvision and kornia use for grey, I and Q the chroma plane
_YIQ_FROM_RGB = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                              [0.211, -0.523, 0.312]], dtype=torch.float64)
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)


def color_jitter(x: torch.Tensor, gain: Factor, contrast: Factor, saturation: Factor,
                 hue: Factor) -> torch.Tensor:
    """Brightness gain, contrast about the image's grey mean, saturation and hue (in turns of the
    colour circle, positive from red towards yellow and green), each a scalar or one value per
    image, folded into one affine map per image: ``gain * contrast * S x + (1 - contrast) * gain
    * grey mean``, where S scales and rotates the chroma plane of YIQ. Brightness, contrast and
    saturation are torchvision's (tested against them; clipped once at the end, not after each
    step); the hue rotation keeps each pixel's luma, so it is not HSV's hue shift (which keeps
    max and min), but a linear map is far cheaper than kornia's two HSV round trips per batch
    (measured: 2.6 s vs 0.3 s for 32 images at 224 px on a loaded 2-core CPU), which made the
    data wait of a CPU training step too long."""
    b = x.shape[0]

    def per_image(v: Factor) -> torch.Tensor:
        return torch.as_tensor(v, dtype=torch.float64).reshape(-1).expand(b).cpu()
    turn = -per_image(hue) * 2 * math.pi  # clockwise in (I, Q) is HSV's R -> Y -> G direction
    sat, g, c = per_image(saturation), per_image(gain), per_image(contrast)
    chroma = torch.zeros(b, 3, 3, dtype=torch.float64)
    chroma[:, 0, 0] = 1
    chroma[:, 1, 1] = chroma[:, 2, 2] = sat * torch.cos(turn)
    chroma[:, 1, 2] = -sat * torch.sin(turn)
    chroma[:, 2, 1] = sat * torch.sin(turn)
    # rgb -> yiq, (I, Q) moved, -> rgb; grey (1, 1, 1) maps to itself, so the offset commutes
    mix = (_RGB_FROM_YIQ @ chroma @ _YIQ_FROM_RGB) * (g * c).view(b, 1, 1)
    grey = x.mean(dim=(-2, -1)) @ _YIQ_FROM_RGB[0].to(x)  # (B,) grey mean, luma weights
    offset = ((1 - c) * g).to(x) * grey
    out = torch.baddbmm(offset.view(b, 1, 1).expand(b, 3, 1), mix.to(x), x.reshape(b, 3, -1))
    return out.reshape(x.shape).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: Factor) -> torch.Tensor:
    """Defocus: Gaussian blur of ``sigma`` pixels (a scalar or one per image; sigma must be > 0);
    the kernel covers 3 sigma of the largest and reflects at the border (kornia)."""
    from kornia.filters import gaussian_blur2d
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
    if s.numel() == 1:
        s = s.expand(x.shape[0])
    radius = max(1, math.ceil(3 * float(s.max())))
    size = max(1, min(2 * radius + 1, 2 * (min(x.shape[-2:]) // 2) - 1))  # reflect: < side
    return gaussian_blur2d(x, (size, size), torch.stack([s, s], dim=1))


def gaussian_noise(x: torch.Tensor, std: float, noise: torch.Tensor) -> torch.Tensor:
    """Sensor noise: ``x + std * noise`` clipped to [0, 1], ``noise`` a standard normal draw of
    x's shape (passed in, so the caller owns the seeding)."""
    return (x + std * noise.to(x)).clamp(0, 1)


def down_up_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Lower magnification / resolution: resize each side to ``factor`` (antialiased) and back to
    the original size (bilinear), as a scan at a lower objective then upsampled."""
    from torchvision.transforms.v2.functional import resize
    h, w = x.shape[-2:]
    small = resize(x, [max(1, round(h * factor)), max(1, round(w * factor))], antialias=True)
    return resize(small, [h, w], antialias=True).clamp(0, 1)


def zoom(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Random resized scale: each image magnified by ``scale`` (B,) >= 1 about a centre moved by
    ``shift`` (B, 2) in [-1, 1] of the free margin, bilinear, same output size (no border)."""
    s = scale.to(x)
    margin = (1 - 1 / s).unsqueeze(1) * shift.to(x)
    theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1 / s
    theta[:, 1, 1] = 1 / s
    theta[:, :, 2] = margin
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


def _jpeg_one(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def jpeg(images: torch.Tensor, quality: Union[int, Sequence[int]]) -> torch.Tensor:
    """JPEG re-compression of uint8 images at ``quality`` (one for all, or one per image), on the
    CPU with Pillow's libjpeg (torchvision.io's codecs are deprecated since 0.29), images spread
    over a few threads (libjpeg releases the GIL; each image is coded alone, so the result does
    not depend on them), returned on the input's device."""
    if images.dtype != torch.uint8:
        raise ValueError(f"jpeg needs uint8 images, got {images.dtype}")
    pixels = images.permute(0, 2, 3, 1).cpu().numpy()
    qualities = [int(quality)] * len(pixels) if isinstance(quality, int) else [int(q) for q in quality]
    if len(pixels) > 1 and _threads() > 1:
        with ThreadPoolExecutor(min(_threads(), len(pixels))) as pool:
            coded = list(pool.map(_jpeg_one, pixels, qualities))
    else:
        coded = [_jpeg_one(p, q) for p, q in zip(pixels, qualities)]
    return torch.from_numpy(np.stack(coded)).permute(0, 3, 1, 2).contiguous().to(images.device)


def _threads() -> int:
    return min(8, os.cpu_count() or 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]."""
    return images.float() / 255.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] -> uint8, rounded."""
    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)


# ---- the robustness contract -------------------------------------------------------------------
def _check(kind: str, severity: int) -> None:
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; choices: {', '.join(PERTURBATIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r} for {kind!r}; choices: "
                         f"{', '.join(map(str, SEVERITIES))}")


def severity_description(kind: str, severity: int) -> str:
    """Human-readable strength of ``kind`` at ``severity``, e.g. ``"blur sigma 1.5 px"``."""
    _check(kind, severity)
    if severity == 0:
        return "clean"
    return _DESCRIBE[kind].format(v=STRENGTHS[kind][severity - 1])


def image_generator(image_id: str, kind: str) -> torch.Generator:
    """A CPU generator seeded by SHA-256 of (image id, kind): the same in every process
    (Python's ``hash`` is salted per process, so it is not used)."""
    digest = hashlib.sha256(f"{image_id}\x1f{kind}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _signs(generator: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1


def _perturb_one(image: torch.Tensor, kind: str, severity: int, image_id: str) -> torch.Tensor:
    """One (1, 3, H, W) uint8 image at a fixed strength."""
    v = STRENGTHS[kind][severity - 1]
    if kind == "jpeg":
        return jpeg(image, int(v))
    g = image_generator(image_id, kind)
    x = to_float(image)
    if kind == "hed":
        s = _signs(g, 6) * v
        out = hed_jitter(x, (1 + s[:3]).view(1, 3), s[3:].view(1, 3))
    elif kind == "blur":
        out = gaussian_blur(x, v)
    elif kind == "noise":
        out = gaussian_noise(x, v / 255.0, torch.randn(x.shape, generator=g))
    elif kind == "scale":
        out = down_up_scale(x, v)
    else:  # brightness
        out = brightness(x, 1 + float(_signs(g, 1)) * v)
    return to_uint8(out)


def perturb(images: torch.Tensor, kind: str, severity: int,
            image_ids: Sequence[str]) -> torch.Tensor:
    """``images`` (uint8, (B, 3, H, W), CPU) perturbed by ``kind`` at ``severity`` (fixed
    strength; 0 returns the input unchanged), each image seeded by its id in ``image_ids``."""
    _check(kind, severity)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[1] != 3:
        got = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor)
               else type(images).__name__)
        raise ValueError(f"perturb needs uint8 images of shape (B, 3, H, W), got {got}")
    ids = list(image_ids)
    if len(ids) != images.shape[0]:
        raise ValueError(f"perturb got {images.shape[0]} images but {len(ids)} image ids")
    if severity == 0:
        return images.clone()
    out = torch.empty_like(images)
    for i, image_id in enumerate(ids):
        out[i] = _perturb_one(images[i:i + 1], kind, severity, str(image_id))[0]
    return out
