"""Typed configuration of one training run, loadable from YAML or plain dicts.

The dataclasses are the single description of a run: the CLI fills them from flags, sweeps from
YAML, notebooks from keyword arguments; the resolved config is written into every run directory.
Unknown keys and wrong types are errors naming the offending option, never silently ignored.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from cytotune.adapters import LoRAConfig
from cytotune.training.config_values import (ConfigError, _to_plain, check_out_target,
                                             coerce_value, dataclass_from_dict, load_yaml_file,
                                             set_dotted)

# autocast precision of a run (see cytotune.training.features.resolve_precision)
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
# where a method chooses its hyper-parameter (knn's k, logreg's C): on the validation split (the
# study's protocol) or by cross-validation on the training images (issue 19: at 1-2 shots a
# validation split of 1-2 images per class makes the choice close to a coin toss)
SelectOn = Literal["val", "train-cv"]
SELECT_ON: tuple[str, ...] = typing.get_args(SelectOn)
# training augmentations (cytotune.training.augment), in the order they are applied; ``on`` is
# ``dihedral`` (the default), ``off`` none
AUGMENTATIONS: tuple[str, ...] = ("dihedral", "hed", "color", "blur", "jpeg", "scale")


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


def augment_names(value: Any, name: str = "optim.augment") -> tuple[str, ...]:
    """The augmentations ``value`` asks for, in :data:`AUGMENTATIONS` order: True/``on`` is
    ``("dihedral",)``, False/``off`` none, else a comma string or list of names (``on`` may
    join others). Anything else is a ConfigError naming ``name`` and the choices."""
    choices = f"on, off or a comma list of {', '.join(AUGMENTATIONS)}"
    if isinstance(value, bool):
        return ("dihedral",) if value else ()
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ConfigError(f"{name} must be {choices}, got {value!r}")
    if not all(items) or not items:
        raise ConfigError(f"{name} has an empty name in {value!r}; expected {choices}")
    if "off" in items:
        if len(items) > 1:
            raise ConfigError(f"{name}: 'off' cannot be combined with other names, got {value!r}")
        return ()
    unknown = sorted(set(items) - set(AUGMENTATIONS) - {"on"})
    if unknown:
        raise ConfigError(f"{name}: unknown augmentation {', '.join(map(repr, unknown))}; "
                          f"expected {choices}")
    wanted = {"dihedral" if v == "on" else v for v in items}
    return tuple(a for a in AUGMENTATIONS if a in wanted)


def canonical_augment(value: Any) -> Union[bool, str]:
    """How a run's config stores ``optim.augment``: True for dihedral alone (the default, so
    runs from before the stain augmentations keep their resolved config), False for none, else
    the comma string in :data:`AUGMENTATIONS` order."""
    names = augment_names(value)
    if names == ("dihedral",):
        return True
    return ",".join(names) if names else False


def check_lr(name: str, value: Any, *, optional: bool = False) -> None:
    """A learning rate: a finite number above 0 and at most :data:`MAX_LR` (errors name
    ``name`` and say why the bound is there)."""
    check_number(name, value, above=0, optional=optional)
    if value is not None and value > MAX_LR:
        raise ConfigError(f"{name} must be > 0 and <= {MAX_LR:g} (AdamW moves every weight by "
                          f"about the learning rate per step; a larger one diverges), got "
                          f"{value!r}")


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
    # stain normalisation at decode time (cytotune.data.stain): "none", "macenko" or "reinhard"
    # onto the stain of the image stain_target (fitted once; its parameters go into the run;
    # ignored with "none")
    stain_norm: str = "none"
    stain_target: Optional[str] = None


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
    # image-training augmentation: True/"on" (flips and right-angle rotations, "dihedral"),
    # False/"off", or a comma list / list of AUGMENTATIONS; stored as True, False or the comma
    # string in AUGMENTATIONS order (so an old run's resolved config reads the same)
    augment: Union[bool, str, list[str]] = True
    compile: bool = False  # LoRA / full: torch.compile the model (faster steps after a warm-up)

    def __post_init__(self) -> None:
        try:
            self.augment = canonical_augment(self.augment)
        except ConfigError:
            pass  # validate() reports it, naming the option

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
        augment_names(self.augment)


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
    # label-budget mode (issue 34): ``budget`` training images in total, chosen from the
    # training split by ``sampling`` on the frozen backbone's features without reading a label
    # (cytotune.data.selection); only then are their labels revealed
    budget: Optional[int] = None
    sampling: str = "random"
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
        self._validate_budget()
        self._validate_stain()
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

    def _validate_stain(self) -> None:
        """A known method, and a target when one is on (the target image itself is checked when
        the run fits it: cytotune.data.stain.fit_target). A target with "none" is ignored, so a
        sweep can vary stain_norm over one base that names the target."""
        methods = ("none", "macenko", "reinhard")  # cytotune.data.stain.STAIN_METHODS
        if self.data.stain_norm not in methods:
            raise ConfigError(f"data.stain_norm must be one of {', '.join(methods)}, got "
                              f"{self.data.stain_norm!r}")
        if self.data.stain_norm != "none" and not self.data.stain_target:
            raise ConfigError(f"data.stain_norm {self.data.stain_norm!r} needs data.stain_target "
                              f"(--stain-target IMAGE: the image whose stain every image is "
                              f"mapped to)")

    def _validate_budget(self) -> None:
        from cytotune.data.selection import strategy_names

        if self.sampling not in strategy_names():
            raise ConfigError(f"sampling must be one of {', '.join(strategy_names())}, got "
                              f"{self.sampling!r}")
        if self.budget is None:
            return
        check_number("budget", self.budget, minimum=2, integer=True)
        if self.shots is not None or self.fraction is not None:
            given = "shots" if self.shots is not None else "fraction"
            raise ConfigError(f"budget chooses the training images itself; give budget or "
                              f"{given}, not both")

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
