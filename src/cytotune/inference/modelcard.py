"""MODEL_CARD.md of an exported model: what it is, what it was trained and tested on, how well it
did (over seeds when several runs are given), what it is for, its limits, and the licence terms
it inherits from its backbone."""
from __future__ import annotations

import datetime as _dt
import math
import statistics
from typing import Any, Optional, Sequence

from cytotune._version import __version__
from cytotune.inference.run import RunFiles
from cytotune.models import ModelCard

METRICS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
           ("macro_f1", "macro F1"), ("auroc", "AUROC (macro, one-vs-rest)"),
           ("ece", "expected calibration error (lower is better)"))


def licence_is_restrictive(card: ModelCard) -> bool:
    """Non-commercial or no-derivatives licences (CC BY-NC(-ND/-SA), ...)."""
    words = card.licence.upper().replace("_", "-").replace(" ", "-").split("-")
    return "NC" in words or "ND" in words or "NONCOMMERCIAL" in card.licence.upper()


def licence_notice(card: ModelCard) -> Optional[str]:
    """A prominent warning for restrictive or gated backbones, or None."""
    lines = []
    if licence_is_restrictive(card):
        words = card.licence.upper().replace(" ", "-").split("-")
        terms = []
        if "NC" in words:
            terms.append("**non-commercial use only**")
        if "ND" in words:
            terms.append("**no distribution of adapted material**: these weights are the "
                         "backbone's weights with the fine-tuning merged into them, i.e. adapted "
                         "material; sharing them may not be permitted at all")
        lines.append(f"**Licence warning: the backbone `{card.name}` is licensed "
                     f"{card.licence}.** Its terms apply to this model: " + "; ".join(terms) + ".")
    if card.gated:
        lines.append(f"**The backbone is gated**: its weights are released only to users who "
                     f"accepted its terms of access on {card.homepage or 'the model page'}; "
                     f"anyone receiving this model must be entitled to those weights too.")
    if not lines:
        return None
    lines.append("Check the licence and terms of access before handing this model on.")
    return "\n>\n".join(f"> {line}" for line in lines) + "\n"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _spread(values: Sequence[Optional[float]]) -> str:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return "n/a"
    if len(values) == 1:
        return _fmt(finite[0])
    if len(finite) < 2:
        return f"{_fmt(finite[0])} (one seed defined)"
    return (f"{statistics.mean(finite):.3f} ± {statistics.stdev(finite):.3f} "
            f"(min {min(finite):.3f}, max {max(finite):.3f})")


def _training_images(run: RunFiles) -> str:
    cfg = run.config
    if cfg.shots is not None:
        return (f"few-shot: {cfg.shots} image(s) per class sampled from the training split "
                f"(validation: {min(cfg.shots, 4)} per class)")
    if cfg.fraction is not None:
        return f"{cfg.fraction:g} % of the training split (stratified)"
    return "the whole training split"


def _method(run: RunFiles, card: ModelCard) -> str:
    cfg = run.config
    if cfg.method == "lora" and cfg.encoder != "vision":
        lora = cfg.lora.resolve(card.default_lora_targets)
        towers = "text tower" if cfg.encoder == "text" else "image and text towers"
        return (f"LoRA (rank {lora.rank}, alpha {lora.alpha:g}) on {', '.join(lora.targets)} of "
                f"the {towers}, CLIP's classifier (the class prompts' text embeddings) trained "
                f"end to end with AdamW ({cfg.optim.lr:g} learning rate); the final class "
                f"embeddings are the head")
    if cfg.method == "lora":
        lora = cfg.lora.resolve(card.default_lora_targets)
        return (f"LoRA (rank {lora.rank}, alpha {lora.alpha:g}, scaling {lora.scaling:g}) on "
                f"{', '.join(lora.targets)} of the backbone, plus a linear head, trained end to end "
                f"with AdamW ({cfg.optim.lr:g} learning rate); the adapter is merged into the base "
                f"weights in this export")
    if cfg.method == "zero-shot":
        return ("zero-shot: no training; image-text similarity to the class prompts with the "
                "model's own text tower and logit scale (prompt ensembling over templates)")
    chosen_on = ("by cross-validation on the training images"
                 if run.metrics.get("hyperparameters", {}).get("select_on") == "train-cv"
                 else "on validation")
    if cfg.method == "linear":
        return (f"linear probe: a linear head trained with AdamW on features of the frozen "
                f"backbone ({cfg.optim.lr:g} learning rate"
                + ("; the last step of a fixed schedule, the run scored by cross-validation on "
                   "the training images)" if "train_cv" in run.metrics else ")"))
    if cfg.method == "logreg":
        c = run.metrics.get("hyperparameters", {}).get("C")
        return ("logistic regression (scikit-learn, L2, lbfgs) on features of the frozen "
                "backbone scaled to unit mean norm" + (f", C={c:g} chosen {chosen_on}" if c is not None else ""))
    if cfg.method in ("tip-adapter", "tip-adapter-f"):
        chosen = run.metrics.get("hyperparameters", {})
        return ("Tip-Adapter: zero-shot image-text similarity plus a cache of the training "
                "images' features and labels, "
                + ("its keys fine-tuned (Tip-Adapter-F)" if cfg.method == "tip-adapter-f"
                   else "nothing trained")
                + (f"; alpha={chosen['alpha']:g}, beta={chosen['beta']:g} chosen on validation"
                   if "alpha" in chosen and "beta" in chosen else ""))
    return cfg.method


def _class_counts(metrics: dict[str, Any], class_names: list[str]) -> Optional[list[int]]:
    matrix = metrics.get("test", {}).get("confusion_matrix")
    if not (isinstance(matrix, list) and len(matrix) == len(class_names)):
        return None
    try:
        return [int(sum(row)) for row in matrix]
    except TypeError:
        return None


def model_card_markdown(runs: Sequence[RunFiles], card: ModelCard, export_format: str,
                        trainable: dict[str, int], extra: Sequence[str] = ()) -> str:
    """The MODEL_CARD.md text; ``runs[0]`` is the exported run, all of them give the metrics."""
    run = runs[0]
    cfg = run.config
    classes = run.class_names
    seeds = [r.config.seed for r in runs]
    pre = card.preprocessing
    out: list[str] = []
    out.append(f"# Model card: {card.name} {cfg.method} classifier ({len(classes)} classes)\n")
    notice = licence_notice(card)
    if notice:
        out.append(notice)
    out.append(f"Exported by cytotune {__version__} on {_dt.date.today().isoformat()} as "
               f"{export_format}, from run `{run.path.resolve()}` (seed {cfg.seed}).")
    if len(runs) > 1:
        out.append(f"Metrics are given over {len(runs)} runs of the same setting with seeds "
                   f"{', '.join(map(str, seeds))}; the exported weights are those of seed "
                   f"{cfg.seed}.")
    out.append("\n**For research use only. Not a medical device; not validated for diagnosis.**\n")

    out.append("## Model\n")
    weights = ("the published pretrained weights" if cfg.model.pretrained and not cfg.model.weights
               else f"local weights `{cfg.model.weights}`" if cfg.model.weights
               else "**random initialisation** (pretrained=false: a baseline or test model, not "
                    "the foundation model's weights)")
    out += [f"- Backbone: `{card.name}` ({card.family} family, source `{card.source}`)"
            + (f", {card.description}" if card.description else ""),
            f"- Backbone weights: {weights}",
            f"- Backbone licence: {card.licence}" + (" (gated)" if card.gated else "")
            + (f"; {card.homepage}" if card.homepage else ""),
            f"- Method: {_method(run, card)}",
            "- Trainable parameters: " + ", ".join(
                f"{'backbone (LoRA)' if k == 'backbone' and cfg.method == 'lora' else k} {v:,}"
                for k, v in trainable.items()),
            f"- Output: {len(classes)} classes, in this order: "
            + ", ".join(f"`{c}`" for c in classes),
            f"- Preprocessing: RGB; shorter side resized to {pre.effective_resize} px "
            f"({pre.interpolation}), centre crop {pre.image_size} x {pre.image_size}, scaled to "
            f"[0, 1], normalised with mean {tuple(round(m, 6) for m in pre.mean)} and std "
            f"{tuple(round(s, 6) for s in pre.std)}"]
    out += [f"- {line}" for line in extra]

    out.append("\n## Training data\n")
    d = cfg.data
    out.append(f"- Data set: `{d.source}`" + (f" (layout `{d.layout}`)" if d.layout else ""))
    out.append(f"- Split: the data set's own train/val/test split where it has one, otherwise a "
               f"stratified, group-aware {100 * (1 - d.val_fraction - d.test_fraction):.0f}/"
               f"{100 * d.val_fraction:.0f}/{100 * d.test_fraction:.0f} split with split seed "
               f"{d.split_seed} (the same test images for every seed)")
    out.append(f"- Training images: {_training_images(run)}")
    counts = _class_counts(run.metrics, classes)
    n_test = run.metrics.get("test", {}).get("n")
    if counts:
        out.append(f"- Test images: {sum(counts)} (" + ", ".join(
            f"{c}: {n}" for c, n in zip(classes, counts)) + ")")
    elif n_test is not None:
        out.append(f"- Test images: {n_test}")

    out.append("\n## Evaluation (test split)\n")
    header = "value" if len(runs) == 1 else f"mean ± sd over {len(runs)} seeds"
    out += [f"| metric | {header} |", "| --- | --- |"]
    for key, label in METRICS:
        out.append(f"| {label} | {_spread([r.metrics.get('test', {}).get(key) for r in runs])} |")
    recalls = [r.metrics.get("test", {}).get("per_class_recall") for r in runs]
    if all(isinstance(x, (dict, list)) for x in recalls):
        out += ["", "| class | recall |", "| --- | --- |"]
        for j, c in enumerate(classes):
            values = [x.get(c) if isinstance(x, dict) else (x[j] if j < len(x) else None)
                      for x in recalls]
            out.append(f"| {c} | {_spread(values)} |")
    out.append("\nTest metrics come from the run's own held-out test split (metrics.json); "
               "validation sets of few-shot runs are tiny, so the selected step is noisy.")

    out.append("\n## Intended use\n")
    out.append("Research on adapting vision foundation models to cytology image classification: "
               "reproducing and comparing experiments, and exploring the model's behaviour on "
               "images like those it was trained on. Not for clinical decisions, screening or "
               "diagnosis, and not a replacement for a cytopathologist.")

    out.append("\n## Limits\n")
    out += [
        "- **Domain shift**: trained on one data set; accuracy on other centres, scanners or "
        "microscopes, staining protocols, preparations (liquid-based vs conventional smears) or "
        "magnifications is unknown and typically lower. Validate on local data first.",
        "- **Data set biases**: the model inherits the class balance, patient population, "
        "annotation practice and image selection (cropped cells vs fields of view) of its "
        "training data; the test metrics above are measured on the same source"
        + (f" ({sum(counts)} test images)" if counts else "") + ".",
        "- **Closed set**: it always answers with one of the classes above, also for images "
        "of other cell types, artefacts or non-cytology images; probabilities are not calibrated "
        "beyond the ECE reported above.",
        f"- **Few-shot variance**: {'with ' + str(cfg.shots) + ' images per class, ' if cfg.shots else ''}"
        "results vary between seeds; look at the spread over seeds, not one run.",
        "- Inputs must be prepared as stated under Preprocessing; other resizing, cropping or "
        "colour handling changes the predictions.",
    ]

    out.append("\n## Licence\n")
    out.append(f"The backbone `{card.name}` is licensed **{card.licence}**"
               + (" and gated" if card.gated else "")
               + (f" ({card.homepage})" if card.homepage else "") + ". "
               "This export contains the backbone's weights (with any LoRA update merged in), so "
               "its terms apply to this file as well; the linear head and the adapter were "
               "trained by the user of cytotune on the data set above, whose own licence and "
               "data-use terms also apply.")
    return "\n".join(out) + "\n"
