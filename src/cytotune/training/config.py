"""Typed configuration of one training run, loadable from YAML or plain dicts.

The dataclasses are the single description of a run: the CLI fills them from flags, sweeps from
YAML, notebooks from keyword arguments; the resolved config is written into every run directory.
Unknown keys and wrong types are errors naming the offending option, never silently ignored.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from cytotune.adapters import LoRAConfig

# autocast precision of a run (see cytotune.training.features.resolve_precision)
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
# where a method chooses its hyper-parameter (knn's k, logreg's C): on the validation split (the
# study's protocol) or by cross-validation on the training images (issue 19: at 1-2 shots a
# validation split of 1-2 images per class makes the choice close to a coin toss)
SelectOn = Literal["val", "train-cv"]
SELECT_ON: tuple[str, ...] = typing.get_args(SelectOn)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names it."""


# linear probe length when neither optim.linear_epochs nor optim.steps is given
DEFAULT_LINEAR_EPOCHS = 200
# The largest learning rate accepted. Every optimiser here is AdamW, which moves each weight by
# about lr per step: at lr 5 a run diverges, and 1e300 overflowed to NaN features that failed
# only after training ("Input contains NaN."); studies use 1e-5..1e-2.
MAX_LR = 1.0


def check_number(name: str, value: Any, *, minimum: Optional[float] = None,
                 above: Optional[float] = None, maximum: Optional[float] = None,
                 below: Optional[float] = None, integer: bool = False,
                 optional: bool = False) -> None:
    """Raise a ConfigError naming ``name`` unless ``value`` is a finite number (a whole one if
    ``integer``) within the given bounds (``minimum``/``maximum`` inclusive, ``above``/``below``
    exclusive); ``optional`` lets None through. Checked before any work, so a bad value never
    costs a training run (a NaN learning rate used to fail only after training)."""
    if value is None and optional:
        return
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)):
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum:g}")
    if above is not None:
        bounds.append(f"> {above:g}")
    if maximum is not None:
        bounds.append(f"<= {maximum:g}")
    if below is not None:
        bounds.append(f"< {below:g}")
    if ((minimum is not None and value < minimum) or (above is not None and value <= above)
            or (maximum is not None and value > maximum) or (below is not None and value >= below)):
        raise ConfigError(f"{name} must be {' and '.join(bounds)}, got {value!r}")


def check_lr(name: str, value: Any, *, optional: bool = False) -> None:
    """A learning rate: a finite number above 0 and at most :data:`MAX_LR` (errors name
    ``name`` and say why the bound is there)."""
    check_number(name, value, above=0, optional=optional)
    if value is not None and value > MAX_LR:
        raise ConfigError(f"{name} must be > 0 and <= {MAX_LR:g} (AdamW moves every weight by "
                          f"about the learning rate per step; a larger one diverges), got "
                          f"{value!r}")


def check_out_target(out: str | os.PathLike) -> None:
    """Refuse, before any training, an existing ``--out`` folder the finished run could not
    be published onto: a run is renamed into place at the end, which fails on a mount point
    (a read-only one used to train fully and then suggest freeing space) and is not wanted in
    a folder made read-only. A missing ``--out`` (its parent is checked when the run's
    staging folder is made there) and a file (refused by the run writer) pass."""
    path = Path(out).expanduser()
    if not path.is_dir():
        return
    writable = os.access(path, os.W_OK)
    if os.path.ismount(path):
        if not writable:
            raise ConfigError(f"--out {path} is a read-only mount point: it is not writable; "
                              f"choose another --out")
        raise ConfigError(f"--out {path} is a mount point: a finished run is renamed into "
                          f"place, which cannot replace a mount point; choose a folder inside "
                          f"it, e.g. --out {path / 'run'}")
    if not writable:
        raise ConfigError(f"--out {path} is not writable (read-only folder or file system); "
                          f"choose another --out")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_yaml_file(path: str | Path) -> Any:
    """``yaml.safe_load`` of a file, with any parse error (or a Python tag such as
    ``!!python/object``, which safe_load never constructs) as one ConfigError line naming the
    file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8)") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = _one_line(err.problem or err.context or "")
        if isinstance(err, yaml.constructor.ConstructorError) and "tag" in problem:
            problem = (f"{problem}; cytotune reads plain YAML only (no Python objects or other "
                       f"tags)")
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from None


@dataclass
class PromptsConfig:
    """Overrides of a data set's class prompts for vision-language models (zero-shot, text heads):
    ``class_names`` maps a class (folder) name to its descriptive name, ``templates`` replace the
    layout's templates (each with one ``{}``). Empty: the layout's defaults (cytotune.data.prompts)."""

    class_names: dict[str, str] = field(default_factory=dict)
    templates: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    """Which images, and how to split them when the source has no split of its own."""

    source: str = ""
    layout: Optional[str] = None  # None: a CSV file or a folder of class folders
    options: dict[str, Any] = field(default_factory=dict)  # reader options, e.g. {"level": 3}
    split_seed: int = 0  # fixed across run seeds so every run sees the same test set
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    skip_bad_images: bool = False
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    # out-of-domain evaluation (needs a 'domain' column): images of test_domains are only tested
    # on; None: all domains not named on the other side (both None: no domain split)
    train_domains: Optional[tuple[str, ...]] = None
    test_domains: Optional[tuple[str, ...]] = None


@dataclass
class ModelConfig:
    name: str = "efficientnet-lite0"
    weights: Optional[str] = None  # local checkpoint file or directory instead of the hub
    pretrained: bool = True  # False: random init (baselines, tests)
    image_size: Optional[int] = None  # override the card's input size (e.g. fast CPU runs)
    tokenizer: Optional[str] = None  # HF tokenizer (hub id or local dir) for HF text towers


@dataclass
class LoRASettings:
    """LoRA as configured by a user; ``targets`` None means the model card's default targets
    (q and v of every attention block for ViTs, as in the study; named 1x1 convs for CNNs)."""

    rank: int = 2
    alpha: float = 1.0  # scaling alpha / rank; 1.0 is the study's CLIP-LoRA setting
    targets: Optional[tuple[str, ...]] = None
    dropout: float = 0.0

    def resolve(self, default_targets: tuple[str, ...]) -> LoRAConfig:
        return LoRAConfig(rank=self.rank, alpha=self.alpha, dropout=self.dropout,
                          targets=tuple(self.targets or default_targets))


@dataclass
class FinetuneSettings:
    """Full fine-tuning (``method: full``): which backbone parameters train and at what rate.

    ``optim.lr`` is the head's learning rate; the backbone's is ``backbone_lr`` (None: the same),
    scaled by ``layer_decay ** (N + 1 - depth)`` for a parameter at ``depth`` of N blocks
    (1.0: no decay). ``train_blocks`` N trains only the last N blocks (None: every parameter).
    """

    backbone_lr: Optional[float] = None
    layer_decay: float = 1.0
    train_blocks: Optional[int] = None
    grad_checkpointing: bool = False

    def validate(self) -> None:
        check_lr("finetune.backbone_lr", self.backbone_lr, optional=True)
        check_number("finetune.layer_decay", self.layer_decay, above=0, maximum=1)
        check_number("finetune.train_blocks", self.train_blocks, minimum=1, integer=True,
                     optional=True)


@dataclass
class OptimConfig:
    """Optimiser and schedule; the defaults follow the reference study where it states them.

    Training length, one rule for every method: ``steps``, when given, is the number of
    optimizer steps (a linear probe's head training included). Otherwise LoRA and full
    fine-tuning use ``epochs`` or the few-shot rule (see :meth:`resolve_steps`), and a linear
    probe uses ``linear_epochs`` (None: ``DEFAULT_LINEAR_EPOCHS``) epochs over its cached
    features. A linear run given both ``steps`` and ``linear_epochs`` logs a warning that
    ``linear_epochs`` is not used (a sweep's shared ``base`` may set both for its LoRA and
    linear runs, so it is not an error).
    """

    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    steps: Optional[int] = None  # optimizer steps; None: derived (see resolve_steps)
    epochs: Optional[float] = None  # alternative to steps, in passes over the training set
    warmup_fraction: float = 0.1
    val_every: Optional[int] = None  # validate every N steps (and at the end); None: ~10 times
    # linear probe: epochs over the cached features (None: DEFAULT_LINEAR_EPOCHS); unused when
    # steps is given
    linear_epochs: Optional[int] = None
    augment: bool = True  # flips and right-angle rotations during LoRA training
    compile: bool = False  # LoRA / full: torch.compile the model (faster steps after a warm-up)

    def resolve_steps(self, num_train: int, shots: Optional[int]) -> int:
        """Optimizer steps for a run: explicit steps, else epochs, else the study's few-shot rule
        (50 + 100 x shots) or 10 epochs when training on all data or a fraction."""
        if self.steps is not None:
            return int(self.steps)
        batch = min(self.batch_size, num_train)
        per_epoch = max(1, -(-num_train // batch))
        if self.epochs is not None:
            return max(1, round(self.epochs * per_epoch))
        if shots is not None:
            return 50 + 100 * shots
        return 10 * per_epoch

    def linear_steps(self, num_train: int) -> int:
        """Head-training steps of a linear probe: ``steps`` if given, else ``linear_epochs``
        (default ``DEFAULT_LINEAR_EPOCHS``) epochs of ``num_train`` features."""
        if self.steps is not None:
            return int(self.steps)
        per_epoch = max(1, -(-num_train // max(1, min(self.batch_size, num_train))))
        epochs = self.linear_epochs if self.linear_epochs is not None else DEFAULT_LINEAR_EPOCHS
        return max(1, epochs * per_epoch)

    def validate(self) -> None:
        check_lr("optim.lr", self.lr)
        check_number("optim.weight_decay", self.weight_decay, minimum=0)
        check_number("optim.batch_size", self.batch_size, minimum=1, integer=True)
        check_number("optim.steps", self.steps, minimum=1, integer=True, optional=True)
        check_number("optim.epochs", self.epochs, above=0, optional=True)
        check_number("optim.warmup_fraction", self.warmup_fraction, minimum=0, maximum=1)
        check_number("optim.val_every", self.val_every, minimum=1, integer=True, optional=True)
        check_number("optim.linear_epochs", self.linear_epochs, minimum=1, integer=True,
                     optional=True)


@dataclass
class TrainConfig:
    """One run: data, backbone, method and its settings, sampling, seed, output."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: str = "linear"  # a name of cytotune.training.method_registry
    lora: LoRASettings = field(default_factory=LoRASettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    shots: Optional[int] = None  # k images per class from train; None: all (or fraction)
    fraction: Optional[float] = None  # percent of train, stratified; None: all
    seed: int = 1
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    # autocast precision: "auto" is bf16 on CUDA, fp32 on a CPU; "bf16" on a CPU with native
    # bf16 (avx512_bf16, AMX) is much faster; weights, optimizer state and heads stay fp32
    precision: Precision = "auto"
    out: Optional[str] = None  # run directory; None: nothing written
    cache_dir: Optional[str] = ".cytotune_cache"  # decoded images and features; None: no cache
    overwrite: bool = False
    num_workers: int = 2  # image decoding threads
    # vision-language models: the head starts from the class prompts' text embeddings ("text")
    # or random weights; LoRA adapts the image tower, the text tower (CLIP classifier) or both
    head_init: Literal["random", "text"] = "random"
    encoder: Literal["vision", "text", "both"] = "vision"
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)  # method "full"
    # knn / logreg / linear: choose k / C / the learning rate on "val" or by cross-validation on
    # the training images ("train-cv", a departure from the study's protocol; see feature_probes
    # and methods.linear_cv)
    select_on: SelectOn = "val"

    def validate(self) -> None:
        """Check every option before any work: numbers within range (message naming the option
        and value), combinations that make sense, ``out`` away from the data."""
        if self.shots is not None and self.fraction is not None:
            raise ConfigError("give either shots or fraction, not both")
        check_number("shots", self.shots, minimum=1, integer=True, optional=True)
        if self.fraction is not None:
            check_number("fraction (a percentage)", self.fraction, above=0, maximum=100)
        if not self.data.source:
            raise ConfigError("data.source is required (a folder, a CSV file, or a named layout's root)")
        check_number("seed", self.seed, minimum=0, integer=True)
        check_number("num_workers", self.num_workers, minimum=0, integer=True)
        check_number("data.split_seed", self.data.split_seed, minimum=0, integer=True)
        check_number("data.val_fraction", self.data.val_fraction, minimum=0, below=1)
        check_number("data.test_fraction", self.data.test_fraction, minimum=0, below=1)
        if self.data.val_fraction + self.data.test_fraction >= 1:
            raise ConfigError(f"data.val_fraction + data.test_fraction must be < 1 to leave "
                              f"training images, got {self.data.val_fraction:g} + "
                              f"{self.data.test_fraction:g}")
        check_number("model.image_size", self.model.image_size, minimum=1, integer=True,
                     optional=True)
        self.optim.validate()
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                              f"{self.precision!r}")
        if self.encoder != "vision" and self.method not in ("lora", "zero-shot"):
            # zero-shot uses both towers as they are, so a sweep's shared encoder fits it too;
            # other methods train an image-feature head, which the text tower would not feed
            raise ConfigError(f"encoder={self.encoder!r} chooses where LoRA goes; method "
                              f"{self.method!r} adapts no text encoder (use method 'lora')")
        self._validate_select_on()
        self.finetune.validate()
        try:
            self.lora.resolve(("q",))
        except ValueError as err:
            raise ConfigError(f"lora: {err}") from None
        if self.out:
            from cytotune.training.rundir import RunDirError, check_out_vs_data
            try:
                check_out_vs_data(self.out, self.data.source)
            except RunDirError as err:
                raise ConfigError(str(err)) from None
            check_out_target(self.out)

    def _validate_select_on(self) -> None:
        """``train-cv`` only for methods that implement it or choose nothing (prototype,
        zero-shot: a sweep's shared ``base`` may set it for them too)."""
        from cytotune.training.method_registry import (CHOOSES_NOTHING, CV_SELECTION,
                                                       TRAINING_FREE)

        if self.select_on not in SELECT_ON:
            raise ConfigError(f"select_on must be one of {', '.join(SELECT_ON)}, got "
                              f"{self.select_on!r}")
        if self.select_on == "train-cv" and self.method not in (
                CV_SELECTION | CHOOSES_NOTHING | TRAINING_FREE):
            raise ConfigError(
                f"select_on='train-cv' (cross-validation on the training images) is implemented "
                f"for methods {', '.join(sorted(CV_SELECTION))}; method {self.method!r} chooses "
                f"its best step on the validation split only (use select_on='val')")

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return dataclass_from_dict(cls, values, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        values = load_yaml_file(path) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        try:
            return cls.from_dict(values)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None


def set_dotted(values: dict[str, Any], key: str, value: Any, label: str = "option") -> None:
    """Set ``values["a"]["b"]["c"] = value`` for the dotted ``key`` "a.b.c", creating sections."""
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{label} {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dataclass_from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a plain mapping, checking every key and type; errors name the
    option with its dotted ``prefix`` (shared with the sweep configuration)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(prefix + k for k in unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    kwargs = {name: coerce_value(hints[name], value, prefix + name) for name, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {err}") from None


def coerce_value(hint: Any, value: Any, name: str) -> Any:
    """Check ``value`` against a type hint, converting where YAML is looser than Python."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(arg, value, name)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{name}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, name + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [coerce_value(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value
