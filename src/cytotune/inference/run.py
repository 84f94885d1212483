"""Reading a finished run directory back: its config, class names, head and LoRA adapter.

Everything is read with safetensors (never pickle), and every file is checked against the others
before it is used: a head trained for another class list or another backbone, an adapter from
another model, a run that never finished, all fail with a :class:`RunDirError` that names the
file and the values that disagree. Each file loading depends on is also checked against the
sha256 digest recorded when the run was written (manifest.json, see
:mod:`cytotune.training.run_manifest`): a file damaged or replaced later is refused even when it
still parses. Runs written before manifests existed load with a warning that says so.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from cytotune.data.stain import STAIN_FILE, StainError, StainNormaliser
from cytotune.training.config import ConfigError, TrainConfig
from cytotune.training.methods.base import NormalisedLinear, head_takes_normalised_features
from cytotune.training.methods.probe_heads import PROBE_HEAD_KEYS, TIP_ADAPTERS, head_from_tensors
from cytotune.training.run_manifest import (MANIFEST_FILE, ManifestError, read_manifest,
                                            verify_files)

PathLike = Union[str, Path]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
HEAD_FILE = "head.safetensors"
ADAPTER_FILE = "adapter.safetensors"
BACKBONE_FILE = "backbone.safetensors"  # the whole fine-tuned backbone of a method "full" run
FULL_METHOD = "full"
PREDICTIONS_FILE = "predictions.csv"
HEAD_KEYS = ("weight", "bias")
# the files loading a run reads, each checked against its digest in manifest.json
DESCRIPTION_FILES = (CONFIG_FILE, METRICS_FILE, STAIN_FILE)
WEIGHT_FILES = (HEAD_FILE, ADAPTER_FILE, BACKBONE_FILE)

log = logging.getLogger("cytotune")


class RunDirError(ValueError):
    """A run directory that is missing, incomplete, or whose files do not fit together."""


@dataclass
class RunFiles:
    """What a run directory says about the model it trained (nothing is built yet)."""

    path: Path
    config: TrainConfig
    metrics: dict[str, Any]
    class_names: list[str]
    head: Path  # head.safetensors
    adapter: Optional[Path] = None  # adapter.safetensors of a LoRA run
    backbone: Optional[Path] = None  # backbone.safetensors of a full fine-tuning run
    # the stain normalisation the run trained with (stain.json), applied to every image predicted
    stain: Optional[StainNormaliser] = None

    @property
    def model_name(self) -> str:
        return self.config.model.name


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunDirError(f"{path} is not readable JSON: {err}") from err
    if not isinstance(value, dict):
        raise RunDirError(f"{path}: expected a JSON object at the top level")
    return value


def read_run(run_dir: PathLike) -> RunFiles:
    """Check that ``run_dir`` is a complete run and read its config, metrics and class names."""
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise RunDirError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise RunDirError(f"{path} is not a run directory (expected a folder written by "
                          f"`cytotune train --out`)")
    if not (path / METRICS_FILE).is_file():
        present = sorted(p.name for p in path.iterdir())
        raise RunDirError(
            f"{path} is not a complete run: it has no {METRICS_FILE} (a run writes it last; found "
            f"{', '.join(present) or 'nothing'}). Point at a finished run directory, or train again")
    missing = [name for name in (CONFIG_FILE, HEAD_FILE) if not (path / name).is_file()]
    if missing:
        raise RunDirError(f"run directory {path} is incomplete: {', '.join(missing)} missing")
    verified = _verify_digests(path)
    try:
        config = TrainConfig.from_yaml(path / CONFIG_FILE)
    except (ConfigError, OSError) as err:
        raise RunDirError(f"{path / CONFIG_FILE}: {err}") from err
    except Exception as err:  # yaml.YAMLError and friends
        raise RunDirError(f"{path / CONFIG_FILE} is not a readable run config: {err}") from err
    metrics = _read_json(path / METRICS_FILE)
    class_names = metrics.get("class_names")
    if not (isinstance(class_names, list) and class_names
            and all(isinstance(c, str) for c in class_names)):
        raise RunDirError(f"{path / METRICS_FILE} has no class_names list; it was not written by "
                          f"this version of cytotune or was edited")
    if len(set(class_names)) != len(class_names):
        raise RunDirError(f"{path / METRICS_FILE}: class_names lists a class twice: {class_names}")
    adapter = path / ADAPTER_FILE
    # LoRA on the text tower alone leaves the image tower untouched: its classifier is the head
    if config.method == "lora" and config.encoder != "text" and not adapter.is_file():
        raise RunDirError(f"run directory {path} is a LoRA run (config.yaml: method lora) but "
                          f"has no {ADAPTER_FILE}")
    if config.method != "lora" and adapter.is_file():
        raise RunDirError(f"{adapter}: a LoRA adapter in a {config.method!r} run (config.yaml: "
                          f"method {config.method}); the folder mixes files of different runs")
    backbone = path / BACKBONE_FILE
    if config.method == FULL_METHOD and not backbone.is_file():
        raise RunDirError(f"run directory {path} is a full fine-tuning run (config.yaml: method "
                          f"full) but has no {BACKBONE_FILE}")
    if config.method != FULL_METHOD and backbone.is_file():
        raise RunDirError(f"{backbone}: fine-tuned backbone weights in a {config.method!r} run "
                          f"(config.yaml: method {config.method}); the folder mixes files of "
                          f"different runs")
    stain = _read_stain(path, config)
    if verified is not None:
        # the weights after the structural checks above, which name mixed or missing files
        # more precisely; what is left is a file whose bytes differ from those the run wrote
        _check(path, WEIGHT_FILES, verified)
    return RunFiles(path=path, config=config, metrics=metrics, class_names=list(class_names),
                    head=path / HEAD_FILE, adapter=adapter if adapter.is_file() else None,
                    backbone=backbone if backbone.is_file() else None, stain=stain)


def _read_stain(path: Path, config: TrainConfig) -> Optional[StainNormaliser]:
    """The run's fitted stain normalisation from stain.json (so prediction needs no target
    image), checked against config.yaml's ``data.stain_norm``."""
    file = path / STAIN_FILE
    method = config.data.stain_norm
    if method == "none":
        if file.is_file():
            raise RunDirError(f"{file}: stain parameters in a run without stain normalisation "
                              f"(config.yaml: data.stain_norm none); the folder mixes files of "
                              f"different runs")
        return None
    if not file.is_file():
        raise RunDirError(f"run directory {path} trained with {method} stain normalisation "
                          f"(config.yaml: data.stain_norm {method}) but has no {STAIN_FILE}, "
                          f"whose parameters prediction applies")
    try:
        stain = StainNormaliser.from_json(_read_json(file), str(file))
    except StainError as err:
        raise RunDirError(str(err)) from None
    if stain.method != method:
        raise RunDirError(f"{file} holds {stain.method} parameters but config.yaml names "
                          f"data.stain_norm {method}")
    return stain


def _check(path: Path, names: tuple[str, ...], files: dict[str, dict[str, Any]]) -> None:
    try:
        verify_files(path, names, files)
    except ManifestError as err:
        raise RunDirError(str(err)) from None


def _verify_digests(path: Path) -> Optional[dict[str, dict[str, Any]]]:
    """Check config.yaml and metrics.json against the run's manifest before they are parsed, and
    return the manifest for the weight files; None, with a warning, for a run written before
    manifests, whose files cannot be checked."""
    try:
        files = read_manifest(path)
    except ManifestError as err:
        raise RunDirError(str(err)) from None
    if files is None:
        log.warning("%s has no %s (written by a cytotune version before run manifests): its "
                    "files are loaded without checking their digests", path, MANIFEST_FILE)
        return None
    _check(path, DESCRIPTION_FILES, files)
    return files


def _safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist") from None
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise RunDirError(f"{path} is not a readable safetensors file: {err}") from err


def load_head(run: RunFiles, feature_dim: int) -> nn.Module:
    """The run's linear head, checked against the class names and the backbone's feature width
    (a :class:`NormalisedLinear` for runs whose classifier is CLIP's, see
    ``head_takes_normalised_features``; a prototype or kNN head for those methods)."""
    tensors, meta = _safetensors(run.head)
    where = str(run.head)
    if run.config.method in PROBE_HEAD_KEYS:
        return _load_probe_head(run, feature_dim, tensors, meta)
    if set(tensors) != set(HEAD_KEYS):
        raise RunDirError(f"{where}: expected the tensors {list(HEAD_KEYS)} of a linear head, "
                          f"found {sorted(tensors)}")
    weight, bias = tensors["weight"], tensors["bias"]
    n_classes = len(run.class_names)
    problems = []
    if weight.dim() != 2:
        problems.append(f"weight has shape {tuple(weight.shape)}, expected (classes, features)")
    else:
        if weight.shape[0] != n_classes:
            problems.append(f"it has {weight.shape[0]} classes (weight {tuple(weight.shape)}) but "
                            f"{METRICS_FILE} lists {n_classes} class names {run.class_names}")
        if weight.shape[1] != feature_dim:
            problems.append(f"it takes {weight.shape[1]}-d features but the backbone "
                            f"'{run.model_name}' gives {feature_dim}-d features (a head of another "
                            f"backbone?)")
    if tuple(bias.shape) != (weight.shape[0],):
        problems.append(f"bias has shape {tuple(bias.shape)}, weight {tuple(weight.shape)}")
    if "model" in meta and meta["model"] != run.model_name:
        problems.append(f"it was trained on model '{meta['model']}' but config.yaml names "
                        f"'{run.model_name}'")
    if "classes" in meta and meta["classes"].split("\n") != run.class_names:
        problems.append(f"its classes {meta['classes'].split(chr(10))} differ from {METRICS_FILE}'s "
                        f"{run.class_names}")
    if not problems and not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        problems.append("it holds NaN or infinite values")
    if problems:
        raise RunDirError(f"head {where} does not fit this run: " + "; ".join(problems))
    # zero-shot and text-encoder LoRA runs keep CLIP's classifier: a head on normalised features
    head = (NormalisedLinear if head_takes_normalised_features(run.config) else nn.Linear)(
        feature_dim, n_classes)
    with torch.no_grad():
        head.weight.copy_(weight.float())
        head.bias.copy_(bias.float())
    return head.eval()


def _load_probe_head(run: RunFiles, feature_dim: int, tensors: dict[str, torch.Tensor],
                     meta: dict[str, str]) -> nn.Module:
    """A ``prototype``, ``knn`` or ``tip-adapter(-f)`` run's head, checked like a linear one."""
    method, where = run.config.method, str(run.head)
    expected = PROBE_HEAD_KEYS[method]
    if set(tensors) != set(expected):
        raise RunDirError(f"{where}: expected the tensors {list(expected)} of a {method} head, "
                          f"found {sorted(tensors)}")
    n_classes = len(run.class_names)
    matrix = tensors["weight" if method == "prototype" else "keys"]
    classes = (matrix.shape[0] if method == "prototype" else tensors["values"].shape[-1]
               if method in TIP_ADAPTERS else int(tensors["num_classes"]))
    problems = []
    if matrix.dim() != 2 or matrix.shape[1] != feature_dim:
        problems.append(f"it takes features of shape {tuple(matrix.shape[1:])} but the backbone "
                        f"'{run.model_name}' gives {feature_dim}-d features")
    if classes != n_classes:
        problems.append(f"it has {classes} classes but {METRICS_FILE} lists {n_classes}")
    if "model" in meta and meta["model"] != run.model_name:
        problems.append(f"it was trained on model '{meta['model']}' but config.yaml names "
                        f"'{run.model_name}'")
    if "classes" in meta and meta["classes"].split("\n") != run.class_names:
        problems.append(f"its classes differ from {METRICS_FILE}'s {run.class_names}")
    if not problems and not all(torch.isfinite(t.float()).all() for t in tensors.values()):
        problems.append("it holds NaN or infinite values")
    if problems:
        raise RunDirError(f"head {where} does not fit this run: " + "; ".join(problems))
    try:
        return head_from_tensors(method, tensors)
    except (ValueError, RuntimeError) as err:
        raise RunDirError(f"head {where} does not fit this run: {err}") from err


def build_merged_backbone(run: RunFiles):
    """The run's backbone with its LoRA adapter (if any) folded into plain base layers.

    The backbone is rebuilt as training built it (``build_run_backbone``: same card, input size
    override, weights, and the run seed for random-init backbones); the adapter is checked against
    config.yaml, loaded with ``load_adapter``'s own checks, merged, and the LoRA wrappers removed,
    so the module holds exactly the library's layers and key names.
    """
    from cytotune.adapters import (LoRAConfig, apply_lora, load_adapter, read_adapter_metadata,
                                   remove_lora)
    from cytotune.training.runner import build_run_backbone

    backbone = build_run_backbone(run.config)
    if run.backbone is not None:
        load_backbone_weights(run, backbone)
    if run.adapter is None:
        return backbone.eval()
    where = str(run.adapter)
    try:
        meta = read_adapter_metadata(run.adapter)
    except ValueError as err:
        raise RunDirError(str(err)) from err
    if meta.get("model") != run.model_name:
        found = repr(meta["model"]) if "model" in meta else "no model name"
        raise RunDirError(f"adapter {where} was trained on model {found} but config.yaml names "
                          f"'{run.model_name}': the adapter belongs to another run")
    try:
        file_cfg = LoRAConfig.from_metadata(meta)
    except ValueError as err:
        raise RunDirError(f"adapter {where}: {err}") from err
    expected = run.config.lora.resolve(backbone.card.default_lora_targets)
    wrong = [f"{k}: config.yaml has {a!r}, adapter has {b!r}" for k, a, b in (
        ("rank", expected.rank, file_cfg.rank), ("alpha", expected.alpha, file_cfg.alpha),
        ("targets", sorted(expected.targets), sorted(file_cfg.targets))) if a != b]
    if wrong:
        raise RunDirError(f"adapter {where} does not match config.yaml: " + "; ".join(wrong))
    try:
        apply_lora(backbone.model, file_cfg, backbone.card.lora_targets)
        load_adapter(run.adapter, backbone.model, expect={"model": run.model_name})
    except (ValueError, TypeError) as err:
        message = str(err)
        raise RunDirError(message if where in message else f"adapter {where}: {message}") from err
    remove_lora(backbone.model, merge=True)
    return backbone.eval()


def load_backbone_weights(run: RunFiles, backbone) -> None:
    """Replace the rebuilt backbone's weights with a full fine-tuning run's backbone.safetensors,
    checked key by key and shape by shape against the architecture config.yaml names."""
    assert run.backbone is not None
    tensors, meta = _safetensors(run.backbone)
    where = str(run.backbone)
    if "model" in meta and meta["model"] != run.model_name:
        raise RunDirError(f"{where} holds weights of model '{meta['model']}' but config.yaml names "
                          f"'{run.model_name}'")
    expected = backbone.model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k}: file {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)}"
             for k in sorted(set(expected) & set(tensors)) if tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) (first {unexpected[0]!r})")
        if wrong:
            parts.append(f"shape mismatch {wrong[0]}")
        raise RunDirError(f"{where} does not fit model '{run.model_name}': " + "; ".join(parts))
    backbone.model.load_state_dict(tensors, strict=True)
