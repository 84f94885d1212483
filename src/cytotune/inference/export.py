"""A trained run as one standalone model: ``cytotune export RUN_DIR --format safetensors|onnx``.

Both formats hold the backbone with the LoRA update merged into its weights, plus the linear head.

safetensors
    ``model.safetensors``: the backbone's tensors under the key names the plain library expects
    (timm: ``timm.create_model(...)``'s own; open_clip: the image tower of a CLIP checkpoint,
    ``visual.*`` with ``nn.MultiheadAttention``'s ``in_proj_weight``; transformers: ``ViTModel``'s)
    plus ``head.weight`` / ``head.bias`` (the recipes: :mod:`cytotune.inference.plain_model`). The README shows runnable code that rebuilds the model
    with that library alone; the construction code is executed (on the meta device) during export
    and its keys and shapes checked against the file, so the README cannot drift from the weights.
onnx
    ``model.onnx`` (opset >= 17, dynamic batch axis). Input ``pixels``: float32 (B, 3, S, S) RGB in
    0..255, already resized and centre-cropped; the normalisation is inside the graph. Outputs
    ``logits`` and ``probabilities`` (B, C). After export the graph is run in onnxruntime on test
    inputs and compared with PyTorch (``ONNX_ATOL`` on probabilities); the measured differences
    are written to ``export.json`` and the README.

Every export also carries ``MODEL_CARD.md``, ``export.json`` (class names, preprocessing,
provenance) and ``README.md``. The folder appears atomically (staged, then renamed).

Stain normalisation (a run trained with ``--stain-norm``) is NOT part of either format: Macenko's
per-image eigen-decomposition and percentiles have no place in a weights file, and are not
exported to ONNX. The export copies the run's ``stain.json`` (the fitted parameters) and says in
its README, model card and export.json that images must be normalised with them (torchstain,
after resize and crop) before the model, or predictions differ from cytotune's.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from cytotune._version import __version__
from cytotune.inference.model import CytotuneModel, load
from cytotune.inference.modelcard import licence_notice, model_card_markdown
from cytotune.inference.plain_model import (LIBRARY_PACKAGES, ExportError, PlainRecipe,
                                             check_plain_keys, library_version, plain_state_dict,
                                             recipe_for)
from cytotune.inference.run import RunFiles, read_run
from cytotune.training.methods.base import head_takes_normalised_features
from cytotune.training.methods.probe_heads import PROBE_HEAD_KEYS

log = logging.getLogger(__name__)

# what the heads that no export format rebuilds are, for the refusal message
_PROBE_HEAD_WORDS = {"prototype": "centred cosine nearest-mean", "knn": "k-nearest-neighbour",
                     "tip-adapter": "zero-shot plus training-feature cache (Tip-Adapter)",
                     "tip-adapter-f": "zero-shot plus fine-tuned feature cache (Tip-Adapter-F)"}

PathLike = Union[str, Path]
FORMATS = ("safetensors", "onnx")
ONNX_ATOL = 1e-4  # max |probability difference| onnxruntime vs PyTorch (float32, CPU)
MIN_OPSET = 17
# settings that must agree between the runs whose metrics one model card summarises
_SAME_SETTING = (("model", lambda c: c.model.name), ("method", lambda c: c.method),
                 ("data", lambda c: (c.data.source, c.data.layout, c.data.split_seed)),
                 ("shots", lambda c: c.shots), ("fraction", lambda c: c.fraction),
                 ("lora", lambda c: (c.lora.rank, c.lora.alpha, c.lora.targets)
                  if c.method == "lora" else None),
                 ("image_size", lambda c: c.model.image_size))


@dataclass
class ExportResult:
    out_dir: Path
    format: str
    files: list[str]
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------- README code

_PREPROCESS_CODE = '''\
def preprocess(path):
    """uint8 (3, S, S) RGB: shorter side to RESIZE_SIZE, centre crop IMAGE_SIZE (as in training)."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    if width <= height:
        size = (RESIZE_SIZE, max(1, int(RESIZE_SIZE * height / width)))
    else:
        size = (max(1, int(RESIZE_SIZE * width / height)), RESIZE_SIZE)
    if size != image.size:
        image = image.resize(size, INTERPOLATION)
    left = int(round((size[0] - IMAGE_SIZE) / 2.0))
    top = int(round((size[1] - IMAGE_SIZE) / 2.0))
    image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()
'''

_INTERPOLATION_NAMES = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}


def _constants(model: CytotuneModel) -> str:
    pre = model.preprocessing
    return (f"CLASS_NAMES = {list(model.class_names)!r}\n"
            f"IMAGE_SIZE, RESIZE_SIZE = {pre.image_size}, {pre.effective_resize}\n"
            f"INTERPOLATION = Image.Resampling.{_INTERPOLATION_NAMES[pre.interpolation]}\n"
            f"MEAN = {tuple(pre.mean)!r}\n"
            f"STD = {tuple(pre.std)!r}\n")


def safetensors_code(model: CytotuneModel, recipe: PlainRecipe) -> str:
    """The README's Python: rebuild the model with the plain library, load the file, predict."""
    body = "\n".join(f"        {line}" for line in recipe.features)
    prefix = recipe.key_prefix
    strip = (f'{{k[len("{prefix}"):]: v for k, v in tensors.items() if k.startswith("{prefix}")}}'
             if prefix else '{k: v for k, v in tensors.items() if not k.startswith("head.")}')
    return f'''\
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
{recipe.imports}

EXPORT_DIR = Path(".")  # the folder holding model.safetensors
{_constants(model)}
tensors = load_file(str(EXPORT_DIR / "model.safetensors"))

{recipe.build}
backbone.load_state_dict({strip}, strict=True)
head = torch.nn.Linear({model.backbone.feature_dim}, {model.num_classes})
head.load_state_dict({{"weight": tensors["head.weight"], "bias": tensors["head.bias"]}})


class Classifier(torch.nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):  # x: normalised float (B, 3, IMAGE_SIZE, IMAGE_SIZE) -> logits
{body}
        return self.head(feats)


model = Classifier(backbone, head).eval()


{_PREPROCESS_CODE}

def normalise(pixels):
    """uint8 (B, 3, S, S) -> the model's input."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def predict(paths):
    pixels = torch.from_numpy(np.stack([preprocess(p) for p in paths]))
    with torch.no_grad():
        probabilities = model(normalise(pixels)).{"sigmoid()" if model.task.multi_label else "softmax(-1)"}
    return [dict(zip(CLASS_NAMES, row.tolist())) for row in probabilities]
'''


def onnx_code(model: CytotuneModel) -> str:
    return f'''\
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

EXPORT_DIR = Path(".")  # the folder holding model.onnx
{_constants(model)}
session = ort.InferenceSession(str(EXPORT_DIR / "model.onnx"), providers=["CPUExecutionProvider"])


{_PREPROCESS_CODE}

def predict(paths):
    pixels = np.stack([preprocess(p) for p in paths]).astype(np.float32)  # 0..255, not normalised
    logits, probabilities = session.run(["logits", "probabilities"], {{"pixels": pixels}})
    return [dict(zip(CLASS_NAMES, row.tolist())) for row in probabilities]
'''


def stain_note(model: CytotuneModel) -> list[str]:
    """What the README and model card say about a run's stain normalisation (nothing without
    one): the exported model does not include it."""
    stain = model.stain
    if stain is None:
        return []
    cls = "NumpyMacenkoNormalizer" if stain.method == "macenko" else "NumpyReinhardNormalizer"
    names = ", ".join(f"`{k}`" for k in stain.params)
    return [f"**Stain normalisation is not included in this export.** The run trained on images "
            f"normalised with {stain.method} (torchstain, numpy backend) onto the target "
            f"`{stain.target_name}` (sha256 {stain.target_sha256[:16]}...), applied to each "
            f"image after the resize and centre crop. Its fitted parameters are in `stain.json` "
            f"({names}): set them on `torchstain.numpy.normalizers.{cls}()` and normalise every "
            f"preprocessed image with it before the model (images where it fails are used as "
            f"they are). Without it, predictions differ from `cytotune predict`'s.\n"]


def _readme(model: CytotuneModel, fmt: str, code: str, info: dict[str, Any],
            recipe: Optional[PlainRecipe]) -> str:
    card = model.card
    pre = model.preprocessing
    lines = [f"# {card.name} {model.config.method} classifier: {fmt} export\n"]
    notice = licence_notice(card)
    if notice:
        lines.append(notice)
    lines.append(f"Classes (output order): {', '.join(f'`{c}`' for c in model.class_names)}. "
                 f"Trained and exported with cytotune {__version__}; the code below does not need "
                 f"cytotune. See MODEL_CARD.md for the data, metrics, intended use and limits.\n")
    if fmt == "safetensors":
        lib = recipe.library
        lines += [
            f"`model.safetensors` holds the backbone with the LoRA update merged into its weights, "
            f"under the key names plain {lib} uses"
            + (" (the image tower of an open_clip CLIP model, prefixed `visual.`)"
               if lib == "open_clip" else "")
            + ", plus the linear classifier as `head.weight` / `head.bias`.\n",
            f"Requires: `torch`, `safetensors`, `pillow`, `numpy`, `{LIBRARY_PACKAGES[lib]}` "
            f"(exported with {lib} {info['library_version']}).\n",
        ]
        lines += [f"Note: {n}\n" for n in recipe.notes]
    else:
        v = info["onnx"]
        lines += [
            f"`model.onnx` (opset {v['opset']}) takes `pixels`: float32 (batch, 3, {pre.image_size}, "
            f"{pre.image_size}) RGB values in **0..255** (resized and centre-cropped as below, "
            f"**not** normalised: the normalisation is part of the graph) and returns `logits` "
            f"and `probabilities` (batch, {model.num_classes}). The batch size is dynamic.\n",
            f"Checked at export: onnxruntime {v['onnxruntime_version']} vs PyTorch on "
            f"{v['checked_images']} images, max |probability difference| "
            f"{v['max_abs_diff_probabilities']:.2e}, max |logit difference| "
            f"{v['max_abs_diff_logits']:.2e} (tolerance {ONNX_ATOL:g} on probabilities).\n",
            "Requires: `onnxruntime`, `pillow`, `numpy`.\n",
        ]
    used = model.metrics.get("environment", {}).get("precision", model.config.precision)
    if used == "bf16":
        lines.append("Note: the run trained and was evaluated under bf16 autocast; this export "
                     "computes in float32, so its probabilities can differ from the run's "
                     "predictions.csv in the third decimal.\n")
    lines += stain_note(model)
    lines += ["```python", code.rstrip(), "", 'print(predict(["cell.png"]))', "```", ""]
    lines.append(
        f"Preprocessing: RGB, shorter side resized to {pre.effective_resize} px "
        f"({pre.interpolation}), centre crop {pre.image_size}, scaled to [0, 1], normalised with "
        f"mean {tuple(pre.mean)} and std {tuple(pre.std)}. cytotune also composites transparent "
        f"pixels onto white and rescales 16-bit images by their bit depth; `convert(\"RGB\")` "
        f"above is the same for ordinary 8-bit RGB/grayscale files.\n")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- ONNX


class OnnxWrapper(nn.Module):
    """0..255 float pixels -> (logits, probabilities), normalisation inside the graph."""

    def __init__(self, model: CytotuneModel):
        super().__init__()
        pre = model.preprocessing
        self.model = model
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model((pixels / 255.0 - self.mean) / self.std)
        return logits, self.model.task.probabilities(logits)


def export_onnx(model: CytotuneModel, path: Path, opset: int = MIN_OPSET) -> dict[str, Any]:
    """Write ``model`` as ONNX to ``path`` and check it in onnxruntime; returns the check."""
    if opset < MIN_OPSET:
        raise ExportError(f"ONNX opset {opset} is too old; use {MIN_OPSET} or newer")
    wrapper = OnnxWrapper(model).eval()
    size = model.preprocessing.image_size
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 3, size, size), generator=generator).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of the exporter
        try:
            torch.onnx.export(
                wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=["pixels"], output_names=["logits", "probabilities"],
                dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"},
                              "probabilities": {0: "batch"}},
                do_constant_folding=True)
        except Exception as err:
            raise ExportError(f"ONNX export of '{model.card.name}' failed: "
                              f"{type(err).__name__}: {err}") from err
    return verify_onnx(wrapper, path, opset)


def verify_onnx(wrapper: OnnxWrapper, path: Path, opset: int) -> dict[str, Any]:
    """Run the ONNX file in onnxruntime on 5 images (batches of 3 and 2) and compare with PyTorch."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as err:
        raise ExportError("the ONNX export needs onnx and onnxruntime: pip install "
                          "'cytotune[export]'") from err
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = wrapper.model.preprocessing.image_size
    generator = torch.Generator().manual_seed(1)
    worst_p = worst_l = 0.0
    n = 0
    for batch in (3, 2):  # other batch sizes than the traced one: the batch axis is dynamic
        pixels = torch.randint(0, 256, (batch, 3, size, size), generator=generator).float()
        with torch.no_grad():
            ref_logits, ref_probs = wrapper(pixels)
        logits, probs = session.run(["logits", "probabilities"], {"pixels": pixels.numpy()})
        worst_l = max(worst_l, float((torch.from_numpy(logits) - ref_logits).abs().max()))
        worst_p = max(worst_p, float((torch.from_numpy(probs) - ref_probs).abs().max()))
        n += batch
    if worst_p > ONNX_ATOL:
        raise ExportError(f"{path}: onnxruntime and PyTorch disagree by {worst_p:.2e} on "
                          f"probabilities (tolerance {ONNX_ATOL:g})")
    return {"opset": opset, "onnxruntime_version": ort.__version__, "checked_images": n,
            "max_abs_diff_probabilities": worst_p, "max_abs_diff_logits": worst_l,
            "tolerance_probabilities": ONNX_ATOL,
            "input": {"name": "pixels", "dtype": "float32", "shape": ["batch", 3, size, size],
                      "range": "0..255 RGB, resized and centre-cropped, not normalised"},
            "outputs": ["logits", "probabilities"]}


# --------------------------------------------------------------------------------- folder


def _check_same_setting(runs: Sequence[RunFiles]) -> None:
    first = runs[0]
    paths = [r.path.resolve() for r in runs]
    if len(set(paths)) != len(paths):
        raise ExportError("the same run directory is given twice")
    for other in runs[1:]:
        wrong = [f"{name}: {get(first.config)!r} vs {get(other.config)!r}"
                 for name, get in _SAME_SETTING if get(first.config) != get(other.config)]
        if other.class_names != first.class_names:
            wrong.append(f"classes: {first.class_names} vs {other.class_names}")
        if wrong:
            raise ExportError(f"runs {first.path} and {other.path} are not seeds of one setting, "
                              f"so one model card cannot summarise them: " + "; ".join(wrong))
    seeds = [r.config.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ExportError(f"several runs have the same seed ({seeds}); give one run per seed")


def _stage(out: Path, overwrite: bool) -> Path:
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise ExportError(f"--out {out} exists and is not empty; choose another folder or "
                              f"pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def _publish(staging: Path, out: Path) -> Path:
    trash = None
    if out.exists():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, trash)
    os.replace(staging, out)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return out


def export(run_dirs: Union[PathLike, Sequence[PathLike]], out: PathLike,
           format: str = "safetensors", overwrite: bool = False, opset: int = MIN_OPSET,
           model: Optional[CytotuneModel] = None) -> ExportResult:
    """Export the model of the first run directory to the folder ``out``.

    Further run directories (other seeds of the same setting) only add their metrics to the
    model card, which then reports the spread over seeds. ``format``: "safetensors" or "onnx".
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise ExportError("no run directory given")
    runs = [read_run(r) for r in run_dirs]
    _check_same_setting(runs)
    if runs[0].config.method in PROBE_HEAD_KEYS:
        raise ExportError(
            f"run {runs[0].path} is a {runs[0].config.method!r} run, whose head (a "
            f"{_PROBE_HEAD_WORDS.get(runs[0].config.method, 'probe')} "
            f"classifier) no export format rebuilds; use cytotune.load or cytotune predict on the "
            f"run directory (a 'logreg' or 'linear' run exports)")
    out = Path(out).expanduser()
    if model is None:
        model = load(runs[0].path, device="cpu")
    model = model.cpu().eval()
    staging = _stage(out, overwrite)
    try:
        info: dict[str, Any] = {
            "format": format, "cytotune_version": __version__, "torch_version": torch.__version__,
            "class_names": list(model.class_names),
            "preprocessing": {"image_size": model.preprocessing.image_size,
                              "resize_size": model.preprocessing.effective_resize,
                              "interpolation": model.preprocessing.interpolation,
                              "mean": list(model.preprocessing.mean),
                              "std": list(model.preprocessing.std)},
            "model_card": model.card.name, "licence": model.card.licence,
            "gated": model.card.gated, "method": model.config.method,
            "feature_dim": model.backbone.feature_dim,
            "runs": [{"path": str(r.path.resolve()), "seed": r.config.seed} for r in runs],
        }
        if model.stain is not None:  # not in the model: the images must be normalised first
            from cytotune.data.stain import STAIN_FILE

            (staging / STAIN_FILE).write_text(json.dumps(model.stain.to_json(), indent=2) + "\n",
                                              encoding="utf-8")
            info["stain_normalisation"] = {"method": model.stain.method, "file": STAIN_FILE,
                                           "included_in_model": False,
                                           "applied": "after resize and centre crop, before "
                                                      "the model's input"}
        recipe = None
        if format == "safetensors" and head_takes_normalised_features(model.config):
            raise ExportError(
                f"run {runs[0].path} ({model.config.method}, encoder {model.config.encoder}) "
                f"classifies L2-normalised features (CLIP's classifier), which the plain "
                f"safetensors recipe does not rebuild; export it with format='onnx' (or use "
                f"cytotune.load on the run directory)")
        if format == "safetensors":
            from safetensors.torch import save_file

            recipe = recipe_for(model)
            info.update(library=recipe.library,
                        library_version=library_version(LIBRARY_PACKAGES[recipe.library]),
                        key_prefix=recipe.key_prefix)
            for name, text in recipe.extra_files.items():
                (staging / name).write_text(text, encoding="utf-8")
            tensors = plain_state_dict(model, recipe)
            check_plain_keys(recipe, tensors, staging)
            save_file(tensors, str(staging / "model.safetensors"), metadata={
                "format": "cytotune-export-1", "library": recipe.library,
                "class_names": json.dumps(model.class_names), "model_card": model.card.name,
                "licence": model.card.licence})
            code = safetensors_code(model, recipe)
        else:
            info["onnx"] = export_onnx(model, staging / "model.onnx", opset)
            code = onnx_code(model)
        trainable = {k: int(v) for k, v in runs[0].metrics.get("trainable_parameters", {}).items()}
        extra = ([f"Exported as safetensors for plain {recipe.library}"] if recipe else
                 [f"Exported as ONNX opset {opset}; onnxruntime vs PyTorch max |probability "
                  f"difference| {info['onnx']['max_abs_diff_probabilities']:.1e}"])
        extra += [line.strip() for line in stain_note(model)]
        (staging / "MODEL_CARD.md").write_text(
            model_card_markdown(runs, model.card, format, trainable, extra), encoding="utf-8")
        (staging / "README.md").write_text(_readme(model, format, code, info, recipe),
                                           encoding="utf-8")
        (staging / "export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        files = sorted(p.name for p in staging.iterdir())
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out_dir=out, format=format, files=files, info=info)
