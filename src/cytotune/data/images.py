"""Turning image files into fixed-size uint8 pixel tensors, once.

Decoding is the slow part of every run, so it happens here only: :func:`load_rgb` normalises any
common file (grayscale, palette, alpha, 16-bit, CMYK) to 8-bit RGB, :func:`decode_images` resizes
and crops a list of files into one ``(N, 3, crop, crop)`` uint8 tensor, and
:class:`cytotune.data.image_store.ImageStore` keeps those tensors on disk keyed by the files'
*contents*, so a changed file can never be served from a stale cache. Normalisation to floats is the model's business and is not done here.
"""
from __future__ import annotations

import contextlib
import io
import logging
import struct
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from cytotune.data.dataset import DataError

logger = logging.getLogger(__name__)

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
SKIP_BAD_HINT = ("pass skip_bad=True (CLI: --skip-bad-images) to skip unreadable images "
                 "and report them instead")
# Slide background is bright, so transparent pixels become white rather than black.
BACKGROUND_RGB = (255, 255, 255)
_HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# What PIL's decoders raise on damaged or unsupported content (besides OSError).
_DECODER_FAILURES = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
                     struct.error, Image.DecompressionBombError)
# An image whose shorter side is below this many pixels is decoded but named in a warning:
# upscaled to a model's 224 px it carries next to no detail (a 1x1 file is likely a broken
# export or a placeholder, not a cell).
MIN_IMAGE_SIDE = 16
# Bump when the cache layout or decoding changes, so old cache files are never reused.
# 2: the sidecar records a digest of the .npy file (and the file's stamp when last checked).


class PixelTransform(Protocol):
    """A per-image step applied to every decoded, resized and cropped uint8 (H, W, 3) image
    (stain normalisation, :mod:`cytotune.data.stain`). ``fingerprint`` changes whenever its
    output could, and is part of the decoded-image cache key. It returns None for an image it
    cannot handle: that image is kept as decoded and listed in ``DecodedImages.unnormalised``."""

    fingerprint: str

    def __call__(self, pixels: np.ndarray) -> Optional[np.ndarray]: ...


class ImageDecodeError(DataError):
    """An image file that cannot be read or decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Path | str, reason: str, hint: str = "") -> None:
        self.path = Path(path)
        self.reason = reason
        self.hint = hint
        message = f"cannot decode image {self.path}: {reason}"
        super().__init__(f"{message}; {hint}" if hint else message)

    def __reduce__(self):  # keep the error picklable across worker processes
        return (type(self), (self.path, self.reason, self.hint))


@dataclass
class DecodedImages:
    """Pixels of the images that decoded, which input positions they came from, and the failures.

    ``pixels[j]`` is the image ``paths[kept[j]]``; ``bad`` lists (path, reason) of skipped files.
    ``key`` is the content key of these files at these settings (set by :class:`ImageStore`, ""
    from :func:`decode_images`), for downstream caches such as extracted features;
    ``image_keys[j]`` the same for the one image ``pixels[j]`` (empty from :func:`decode_images`),
    so a cache can reuse what it holds of any other set of images. ``unnormalised``: the kept
    images a :class:`PixelTransform` could not be applied to (kept as decoded).
    """

    pixels: torch.Tensor  # uint8, (N, 3, crop, crop)
    kept: np.ndarray  # int64, (N,)
    bad: list[tuple[Path, str]] = field(default_factory=list)
    key: str = ""
    image_keys: list[str] = field(default_factory=list)
    unnormalised: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.kept.shape[0])


# --------------------------------------------------------------------------- single images


def load_rgb(path: Path | str) -> Image.Image:
    """Read ``path`` fully and return it as an 8-bit RGB image (see :func:`to_rgb`); a tiny
    or a very large image is decoded and named in one log warning."""
    path = Path(path)
    with _pillow_size_warnings_quiet():
        image = _rgb_from_bytes(_read_bytes(path), path)
    _warn_sizes([(path, image.size)])
    return image


@contextlib.contextmanager
def _pillow_size_warnings_quiet() -> Iterator[None]:
    """Pillow's DecompressionBombWarning (two raw lines with a library path and no file
    name) is silenced while cytotune decodes; :func:`_warn_sizes` says it in one line naming
    the file instead. Entered once by the thread that starts a decode, never by the decoding
    threads themselves (``catch_warnings`` swaps process-wide state, so nesting it in threads
    would race); their warnings pass the same filter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _listed(found: Sequence[tuple[Path, tuple[int, int]]]) -> str:
    shown = ", ".join(f"{path} ({w}x{h})" for path, (w, h) in found[:5])
    return shown + (f" and {len(found) - 5} more" if len(found) > 5 else "")


def _warn_sizes(sizes: Sequence[tuple[Path, tuple[int, int]]]) -> None:
    """One log warning naming the images above Pillow's decompression-bomb limit (decoded
    anyway: a large scan is a legitimate input; above twice the limit Pillow refuses it and the
    file is reported as undecodable), one naming those below :data:`MIN_IMAGE_SIDE`."""
    limit = Image.MAX_IMAGE_PIXELS
    large = [(path, size) for path, size in sizes if limit and size[0] * size[1] > limit]
    if large:
        logger.warning("%d image(s) above Pillow's %.0f-megapixel decompression-bomb limit, "
                       "decoded anyway (about 3 bytes per pixel of memory while resized): %s",
                       len(large), limit / 1e6, _listed(large))
    small = [(path, size) for path, size in sizes if min(size) < MIN_IMAGE_SIDE]
    if small:
        logger.warning("%d image(s) smaller than %d pixels on a side, decoded and upscaled "
                       "(they carry little detail; check them): %s", len(small),
                       MIN_IMAGE_SIDE, _listed(small))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any common mode to 8-bit RGB.

    Alpha is composited onto white (slide background is bright). 16/32-bit grayscale is scaled by
    the bit depth its values actually use (a 12-bit camera's 0..4095 maps to 0..255), so faint
    images are neither clipped nor contrast-stretched per image.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_BIT_MODES:
        pixels = _high_bit_to_uint8(np.asarray(image), is_float=mode == "F")
        return Image.fromarray(pixels).convert("RGB")  # 2-D uint8 -> mode L
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND_RGB + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _high_bit_to_uint8(values: np.ndarray, is_float: bool) -> np.ndarray:
    """Scale pixels to 0..255 by the number of bits their maximum needs (at least 8).

    Float images whose values lie in [0, 1] are taken as already normalised.
    """
    values = values.astype(np.float64)
    if values.size == 0:
        return values.astype(np.uint8)
    low = float(values.min())
    if low < 0:  # signed 32-bit data: shift so the darkest pixel is 0
        values = values - low
    high = float(values.max())
    if is_float and high <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    bits = max(8, int(np.ceil(high)).bit_length())
    return np.rint(values * (255.0 / (2**bits - 1))).astype(np.uint8)


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageDecodeError(path, err.strerror or str(err)) from err
    if not data:
        raise ImageDecodeError(path, "file is empty")
    return data


def _rgb_from_bytes(data: bytes, path: Path) -> Image.Image:
    """Decode ``data`` completely (so truncation is caught here, not later) and convert to RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(image)
    except Image.UnidentifiedImageError as err:  # its message shows an in-memory buffer's id
        raise ImageDecodeError(path, "not a recognised image format (or a corrupt header)") \
            from err
    except _DECODER_FAILURES as err:
        raise ImageDecodeError(path, str(err) or type(err).__name__) from err


def _check_settings(resize_size: int, crop_size: int, interpolation: str) -> Image.Resampling:
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"interpolation={interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
    if resize_size < 1 or crop_size < 1:
        raise DataError(f"resize_size ({resize_size}) and crop_size ({crop_size}) must be >= 1")
    if crop_size > resize_size:
        raise DataError(f"crop_size ({crop_size}) must not exceed resize_size ({resize_size})")
    return INTERPOLATIONS[interpolation]


def resize_and_crop(image: Image.Image, resize_size: int, crop_size: int,
                    interpolation: str) -> np.ndarray:
    """Resize the shorter side to ``resize_size``, center-crop ``crop_size``; uint8 (H, W, 3).

    Matches torchvision's ``Resize(int)`` + ``CenterCrop`` on PIL images, so features agree with
    the models' published preprocessing.
    """
    resample = _check_settings(resize_size, crop_size, interpolation)
    width, height = image.size
    if width <= height:
        new_size = (resize_size, max(1, int(resize_size * height / width)))
    else:
        new_size = (max(1, int(resize_size * width / height)), resize_size)
    if new_size != image.size:
        image = image.resize(new_size, resample)
    left = int(round((new_size[0] - crop_size) / 2.0))
    top = int(round((new_size[1] - crop_size) / 2.0))
    image = image.crop((left, top, left + crop_size, top + crop_size))
    return np.asarray(image, dtype=np.uint8)


def decode_resized(path: Path | str, resize_size: int, crop_size: int,
                   interpolation: str) -> np.ndarray:
    """Load ``path`` as RGB, resize its shorter side and center-crop: uint8 (crop, crop, 3)."""
    _check_settings(resize_size, crop_size, interpolation)
    return resize_and_crop(load_rgb(path), resize_size, crop_size, interpolation)


# --------------------------------------------------------------------------- many images

_T = TypeVar("_T")
_R = TypeVar("_R")


def _ordered_map(function: Callable[[_T], _R], items: Sequence[_T],
                 num_workers: int) -> Iterator[_R]:
    """``map`` in input order, on a thread pool when ``num_workers > 0``.

    At most ``4 * num_workers`` results are in flight, so memory stays bounded on 40k images.
    """
    if num_workers <= 0:
        yield from map(function, items)
        return
    window = 4 * num_workers
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        pending: deque[Future[_R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # stopped early (an error, or the consumer quit): drop queued work
            for future in pending:
                future.cancel()


def _decode_into(paths: Sequence[Path], read: Callable[[int], bytes], out: np.ndarray,
                 resize_size: int, crop_size: int, interpolation: str, skip_bad: bool,
                 num_workers: int, warn_bad: bool = True, start: int = 0,
                 kept: Optional[list[int]] = None, bad: Optional[list[tuple[int, str]]] = None,
                 on_image: Optional[Callable[[int, list[int], list[tuple[int, str]]], None]] = None,
                 transform: Optional[PixelTransform] = None,
                 unnormalised: Optional[list[int]] = None
                 ) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode every path into consecutive rows of ``out``; return kept indices and (index, reason).

    ``read(i)`` supplies the bytes of ``paths[i]``, so callers that already read a file (to hash
    it) do not read it twice. With ``skip_bad=False`` the first bad file raises; with it, each
    skipped file is a log warning unless ``warn_bad=False`` (a caller that reports them itself).
    A resumed build passes ``start`` (inputs already done) with their ``kept`` and ``bad``;
    ``on_image(inputs done, kept, bad)`` follows every input (progress, checkpoints).
    ``transform`` runs on each resized image; the input indices of images it returned None for
    are appended to ``unnormalised`` (the caller's list, extended in place).
    """

    sizes: list[tuple[Path, tuple[int, int]]] = []  # list.append is atomic across threads

    def decode(index: int) -> tuple[np.ndarray, bool] | ImageDecodeError:
        try:
            image = _rgb_from_bytes(read(index), paths[index])
        except ImageDecodeError as err:
            return err
        sizes.append((paths[index], image.size))
        pixels = resize_and_crop(image, resize_size, crop_size, interpolation)
        if transform is None:
            return pixels, True
        changed = transform(pixels)
        return (pixels, False) if changed is None else (changed, True)

    kept = list(kept or [])
    bad = list(bad or [])
    try:
        with _pillow_size_warnings_quiet():
            for index, result in zip(range(start, len(paths)),
                                     _ordered_map(decode, range(start, len(paths)), num_workers)):
                if isinstance(result, ImageDecodeError):
                    if not skip_bad:
                        raise ImageDecodeError(result.path, result.reason,
                                               SKIP_BAD_HINT) from result
                    if warn_bad:
                        logger.warning("skipping %s: %s", result.path, result.reason)
                    bad.append((index, result.reason))
                else:
                    pixels, applied = result
                    out[len(kept)] = pixels.transpose(2, 0, 1)
                    if not applied and unnormalised is not None:
                        unnormalised.append(index)
                    kept.append(index)
                if on_image is not None:
                    on_image(index + 1, kept, bad)
    finally:
        _warn_sizes(sorted(sizes, key=lambda item: str(item[0])))
    return np.asarray(kept, dtype=np.int64), bad


def decode_images(paths: Sequence[Path | str], resize_size: int, crop_size: int,
                  interpolation: str, skip_bad: bool = False,
                  num_workers: int = 0, warn_bad: bool = True,
                  transform: Optional[PixelTransform] = None) -> DecodedImages:
    """Decode, resize and center-crop ``paths`` into one uint8 tensor (N, 3, crop, crop).

    With ``skip_bad=False`` the first unreadable file raises :class:`ImageDecodeError`; with
    ``skip_bad=True`` such files are left out and listed in ``bad``. ``num_workers > 0`` decodes
    on that many threads (PIL releases the GIL while decoding and resizing). ``warn_bad=False``
    leaves the skipped files out of the log, for callers that report ``bad`` themselves (predict
    lists them once, in its summary). ``transform``: applied to each resized image (stain
    normalisation; see :class:`PixelTransform`).
    """
    paths = [Path(p) for p in paths]
    _check_settings(resize_size, crop_size, interpolation)
    return _decode_in_memory(paths, lambda i: _read_bytes(paths[i]), resize_size, crop_size,
                             interpolation, skip_bad, num_workers, warn_bad, transform=transform)


def _decode_in_memory(paths: list[Path], read: Callable[[int], bytes], resize_size: int,
                      crop_size: int, interpolation: str, skip_bad: bool,
                      num_workers: int, warn_bad: bool = True, on_image=None,
                      transform: Optional[PixelTransform] = None) -> DecodedImages:
    out = np.empty((len(paths), 3, crop_size, crop_size), dtype=np.uint8)
    unnormalised: list[int] = []
    kept, bad = _decode_into(paths, read, out, resize_size, crop_size, interpolation, skip_bad,
                             num_workers, warn_bad, on_image=on_image, transform=transform,
                             unnormalised=unnormalised)
    return DecodedImages(pixels=torch.from_numpy(out[: len(kept)]), kept=kept,
                         bad=[(paths[i], reason) for i, reason in bad],
                         unnormalised=[paths[i] for i in unnormalised])
