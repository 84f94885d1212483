"""A trained run as one standalone model: ``cytotune export RUN_DIR --format safetensors|onnx``.

Both formats hold the backbone with the LoRA update merged into its weights, plus the linear head.

safetensors
    ``model.safetensors``: the backbone's tensors under the key names the plain library expects
    (timm: ``timm.create_model(...)``'s own; open_clip: the image tower of a CLIP checkpoint,
    ``visual.*`` with ``nn.MultiheadAttention``'s ``in_proj_weight``; transformers: ``ViTModel``'s)
    plus ``head.weight`` / ``head.bias``. The README shows runnable code that rebuilds the model
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
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from cytotune._version import __version__
from cytotune.inference.model import CytotuneModel, load
from cytotune.inference.modelcard import licence_notice, model_card_markdown
from cytotune.inference.run import RunFiles, read_run
from cytotune.training.methods.base import head_takes_normalised_features
from cytotune.training.methods.probe_heads import PROBE_HEAD_KEYS

# what the heads that no export format rebuilds are, for the refusal message
_PROBE_HEAD_WORDS = {"prototype": "centred cosine nearest-mean", "knn": "k-nearest-neighbour",
                     "tip-adapter": "zero-shot plus training-feature cache (Tip-Adapter)",
                     "tip-adapter-f": "zero-shot plus fine-tuned feature cache (Tip-Adapter-F)"}
from cytotune.models import FusedSelfAttention

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
FORMATS = ("safetensors", "onnx")
ONNX_ATOL = 1e-4  # max |probability difference| onnxruntime vs PyTorch (float32, CPU)
MIN_OPSET = 17
HEAD_PREFIX = "head."
# settings that must agree between the runs whose metrics one model card summarises
_SAME_SETTING = (("model", lambda c: c.model.name), ("method", lambda c: c.method),
                 ("data", lambda c: (c.data.source, c.data.layout, c.data.split_seed)),
                 ("shots", lambda c: c.shots), ("fraction", lambda c: c.fraction),
                 ("lora", lambda c: (c.lora.rank, c.lora.alpha, c.lora.targets)
                  if c.method == "lora" else None),
                 ("image_size", lambda c: c.model.image_size))


class ExportError(ValueError):
    """The run cannot be exported in the requested format (the message says why)."""


@dataclass
class ExportResult:
    out_dir: Path
    format: str
    files: list[str]
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------- recipes


@dataclass
class PlainRecipe:
    """How the plain library rebuilds a backbone, as code for the README (and the export check)."""

    library: str  # "timm" | "open_clip" | "transformers"
    imports: str  # import lines
    build: str  # code that defines ``backbone`` (may read EXPORT_DIR)
    key_prefix: str  # prefix of the backbone's keys in model.safetensors
    features: list[str]  # lines of Classifier.forward computing ``feats`` from ``x``
    rename: Optional[Callable[[str], str]] = None  # our key -> the library's (None: same)
    extra_files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _pool_lines(pooling: str, tokens: str, prefix: str) -> list[str]:
    if pooling == "cls":
        return [f"tokens = {tokens}", "feats = tokens[:, 0]"]
    if pooling == "mean_patch":
        return [f"tokens = {tokens}", f"feats = tokens[:, {prefix}:].mean(dim=1)"]
    if pooling == "cls+mean_patch":
        return [f"tokens = {tokens}",
                f"feats = torch.cat([tokens[:, 0], tokens[:, {prefix}:].mean(dim=1)], dim=-1)"]
    raise ExportError(f"pooling {pooling!r} has no plain-library equivalent in the safetensors "
                      f"export; use --format onnx")


def _library_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "unknown"


def _timm_recipe(model: CytotuneModel) -> PlainRecipe:
    from cytotune.models.families import get_family

    card = model.card
    arch = get_family(card.family).architecture(card)
    kwargs = dict(card.model_kwargs)
    build = f"backbone = timm.create_model({arch!r}, pretrained=False, **{kwargs!r})"
    if card.pooling == "model":
        features = ["feats = self.backbone(x)"]
    else:
        features = _pool_lines(card.pooling, "self.backbone.forward_features(x)",
                               "self.backbone.num_prefix_tokens")
    notes = []
    if arch.startswith("cytotune_"):
        notes.append(f"`{arch}` is a small test architecture that cytotune registers with timm; "
                     f"plain timm does not know it.")
    return PlainRecipe(library="timm", imports="import timm", build=build, key_prefix="",
                       features=features, notes=notes)


def _open_clip_recipe(model: CytotuneModel) -> PlainRecipe:
    import open_clip

    from cytotune.models.families import get_family

    card = model.card
    if card.pooling != "model":
        raise ExportError(f"open_clip card '{card.name}' with pooling {card.pooling!r}: only the "
                          f"tower's own output can be exported as safetensors")
    tower = get_family(card.family).tower_config(card)
    # any open_clip architecture provides the (unused) text tower; the image tower is given whole
    base = next((a for a in (card.architecture, card.source) if a and ":" not in a
                 and a in open_clip.list_models()), "ViT-B-16")
    build = (f"clip = open_clip.create_model({base!r}, pretrained=None,\n"
             f"                              embed_dim={tower['embed_dim']!r},\n"
             f"                              vision_cfg={tower['vision_cfg']!r},\n"
             f"                              quick_gelu={tower['quick_gelu']!r})\n"
             f"backbone = clip.visual  # the image tower; the text tower is not used")
    fused = {name for name, m in model.backbone.model.named_modules()
             if isinstance(m, FusedSelfAttention)}

    def rename(key: str) -> str:
        module, _, leaf = key.rpartition(".")
        parent, _, proj = module.rpartition(".")
        if proj == "in_proj" and parent in fused and leaf in ("weight", "bias"):
            key = f"{parent}.in_proj_{leaf}"  # nn.MultiheadAttention's parameter names
        return key

    notes = []
    timm_name = str(tower["vision_cfg"].get("timm_model_name") or "")
    if timm_name.startswith("cytotune_"):
        notes.append(f"`{timm_name}` is a small test architecture that cytotune registers with "
                     f"timm; plain open_clip/timm do not know it.")
    return PlainRecipe(library="open_clip", imports="import open_clip", build=build,
                       key_prefix="visual.", features=["feats = self.backbone(x)"],
                       rename=rename, notes=notes)


def _transformers_recipe(model: CytotuneModel) -> PlainRecipe:
    import inspect

    inner = model.backbone.model
    config = inner.config
    cls, config_cls = type(inner).__name__, type(config).__name__  # ViTModel, Dinov2Model, ...
    no_pooler = ("add_pooling_layer" in inspect.signature(type(inner).__init__).parameters
                 and getattr(inner, "pooler", None) is None)
    build = (f'backbone = {cls}({config_cls}.from_json_file(str(EXPORT_DIR / '
             f'"backbone_config.json"))' + (", add_pooling_layer=False)" if no_pooler else ")"))
    run_args = "pixel_values=x"
    if "interpolate_pos_encoding" in inspect.signature(inner.forward).parameters:
        size = config.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        resize = size != (model.preprocessing.image_size,) * 2
        run_args += f", interpolate_pos_encoding={resize}"
    tokens = f"self.backbone({run_args}).last_hidden_state"
    prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    pooling = model.card.pooling
    features = ([f"feats = {tokens}[:, 0]"] if pooling == "model"
                else _pool_lines(pooling, tokens, str(prefix)))
    return PlainRecipe(library="transformers",
                       imports=f"from transformers import {config_cls}, {cls}",
                       build=build, key_prefix="", features=features,
                       extra_files={"backbone_config.json": config.to_json_string()})


RECIPES: dict[str, Callable[[CytotuneModel], PlainRecipe]] = {
    "timm": _timm_recipe,
    "timm_pypi_weights": _timm_recipe,
    "open_clip": _open_clip_recipe,
    "hf_vit": _transformers_recipe,
}
LIBRARY_PACKAGES = {"timm": "timm", "open_clip": "open_clip_torch", "transformers": "transformers"}


def recipe_for(model: CytotuneModel) -> PlainRecipe:
    family = model.card.family
    if family not in RECIPES:
        raise ExportError(f"model '{model.card.name}' (family '{family}') has no plain-library "
                          f"safetensors export; families supported: {', '.join(sorted(RECIPES))}. "
                          f"Use --format onnx")
    return RECIPES[family](model)


# --------------------------------------------------------------------------------- tensors


def plain_state_dict(model: CytotuneModel, recipe: PlainRecipe) -> dict[str, torch.Tensor]:
    """Merged backbone tensors under the library's key names, plus ``head.weight``/``head.bias``."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for key, tensor in model.backbone.model.state_dict().items():
        name = recipe.key_prefix + (recipe.rename(key) if recipe.rename else key)
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # shared storage (tied weights): safetensors needs separate copies
            t = t.clone()
        seen[ptr] = name
        out[name] = t
    for key, tensor in model.head.state_dict().items():
        name = HEAD_PREFIX + key
        if name in out:
            raise ExportError(f"the backbone has a tensor named {name!r} itself; cannot store "
                              f"the classifier head under that name")
        out[name] = tensor.detach().to("cpu").contiguous().clone()
    return out


def _build_plain(recipe: PlainRecipe, export_dir: Path, device: str = "meta") -> nn.Module:
    """Run the README's construction code (imports + build) and return ``backbone``."""
    namespace: dict[str, Any] = {"EXPORT_DIR": export_dir, "torch": torch}
    code = f"{recipe.imports}\n{recipe.build}\n"
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))  # open_clip: "no pretrained weights loaded"
    try:
        with torch.device(device):
            exec(compile(code, "<cytotune export: README construction code>", "exec"), namespace)
    finally:
        logging.disable(previous)
    return namespace["backbone"]


def check_plain_keys(recipe: PlainRecipe, tensors: dict[str, torch.Tensor], export_dir: Path) -> None:
    """The README's construction code must give a module whose state dict has exactly the
    exported keys and shapes (checked on the meta device: no memory, no weights)."""
    try:
        plain = _build_plain(recipe, export_dir, "meta")
    except Exception as err:  # a library that cannot build on meta: build it for real
        log.info("meta build of the plain %s model failed (%s); building on the CPU",
                 recipe.library, err)
        plain = _build_plain(recipe, export_dir, "cpu")
    expected = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    ours = {k[len(recipe.key_prefix):]: tuple(v.shape) for k, v in tensors.items()
            if not k.startswith(HEAD_PREFIX)}
    missing, unexpected = expected.keys() - ours.keys(), ours.keys() - expected.keys()
    shapes = [f"{k}: library {expected[k]}, export {ours[k]}"
              for k in sorted(expected.keys() & ours.keys()) if expected[k] != ours[k]]
    if missing or unexpected or shapes:
        raise ExportError(
            f"the plain {recipe.library} model built by the README code does not match the "
            f"exported tensors: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}, "
            f"shapes {shapes[:5]}")


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
                        library_version=_library_version(LIBRARY_PACKAGES[recipe.library]),
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
