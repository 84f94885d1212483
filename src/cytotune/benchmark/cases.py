"""The benchmark: each case times cytotune and the reference-style baseline
(:mod:`cytotune.benchmark.reference`) on the same images, model, splits and step counts, in the
same process, and reports images/s, wall time, peak memory and their ratio.

Cases: ``features`` (plain forward vs cytotune's extraction vs the baseline's), ``linear`` (a
seeds x learning-rates grid of linear probes), ``lora`` (one few-shot LoRA run), ``packed`` (K
LoRA runs one by one vs packed on one backbone); on request ``precision`` (cytotune's linear
grid and LoRA run in fp32 and in bf16: the speed bf16 buys and what it does to test metrics)
``memory`` (the peak memory of LoRA training steps at the bench's batch size, rank and
targets: the question whether CLIP ViT-L/14 with r=16 on q,k,v,o at batch 32 fits in 24 GB)
and ``cache_check`` (what the cache content checks cost a cached linear probe).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from cytotune.adapters import apply_lora, count_lora_parameters, mark_only_lora_trainable
from cytotune.benchmark import reference as ref
from cytotune.benchmark.settings import CASES, EXTRA_CASES, BenchSettings  # noqa: F401  (re-exported)
from cytotune.data import ImageStore
from cytotune.data.cachefiles import STAMP_SETTLE_NS, check_seconds, verification
from cytotune.training.augment import normalise
from cytotune.training.config import TrainConfig, augment_names, set_dotted
from cytotune.training.features import autocast_for, extract_features, resolve_precision
from cytotune.training.group import run_training_group
from cytotune.training.methods.base import Classifier, new_head
from cytotune.training.runner import (build_run_backbone, card_for, prepare_run_data,
                                      resolve_device, run_training)


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """The case's peak memory: CUDA allocations, or the process's resident set sampled every
    20 ms (the process peak of ``getrusage`` cannot be reset between cases)."""
    out: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out.update(peak_bytes=int(torch.cuda.max_memory_allocated(device)),
                   kind="cuda_max_memory_allocated")
        return
    peak, stop = [_rss()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out.update(peak_bytes=max(peak[0], _rss()), kind="process_rss_sampled")


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, dict[str, Any]]:
    with peak_memory(device) as memory:
        start = time.perf_counter()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return value, seconds, memory


class Bench:
    """Shared set-up of the cases: the model's weights file, configs and the data splits."""

    def __init__(self, settings: BenchSettings, workdir: Path):
        self.s = settings
        self.device = resolve_device(settings.device)
        self.precision = resolve_precision(self.device, settings.precision)
        self.workdir = workdir
        self.weights = settings.weights
        if self.weights is None and settings.random_weights:
            # a random-init checkpoint file: runs of several seeds then share one backbone, as
            # they do with real pretrained weights
            from safetensors.torch import save_file

            backbone = build_run_backbone(self.config(**{"seed": 0, "model.pretrained": False}))
            path = workdir / "random_weights.safetensors"
            save_file({k: v.contiguous().clone() for k, v in backbone.model.state_dict().items()},
                      str(path))
            self.weights = str(path)

    def config(self, **options: Any) -> TrainConfig:
        """A run's config: the bench's data, model and device plus dotted ``options``
        (e.g. ``{"optim.lr": 1e-3}``)."""
        s = self.s
        values: dict[str, Any] = {}
        given = {"data.source": s.data, "data.layout": s.layout, "model.name": s.model,
                 "model.image_size": s.image_size, "device": str(self.device),
                 "precision": self.precision,
                 "cache_dir": None, "optim.batch_size": s.batch_size, "lora.rank": s.rank,
                 "lora.targets": list(s.targets) if s.targets else None,
                 "optim.augment": s.augment}
        if self.weights is not None:
            given["model.weights"] = self.weights
        for key, value in {**given, **options}.items():
            set_dotted(values, key, value)
        return TrainConfig.from_dict(values)

    def warm_up(self) -> None:
        """Untimed: read every image file once (the OS file cache) and run one forward pass
        (kernels, allocator, thread pools), so whichever case or side runs first is not
        charged for a cold start."""
        config = self.config(method="linear")
        for path in prepare_run_data(config).data.paths:
            Path(path).read_bytes()
        backbone = build_run_backbone(config).to(self.device).eval()
        size = backbone.preprocessing.image_size
        for precision in ("fp32", "bf16"):  # the precision case times both
            with torch.no_grad(), autocast_for(self.device, precision):
                backbone(torch.zeros(8, 3, size, size, device=self.device))

    def datasets(self, config) -> tuple[ref.FileImages, ref.FileImages, ref.FileImages]:
        """The run's train/val/test images as the baseline reads them (same rows as cytotune;
        training images augmented per use when the config augments, LoRA runs only)."""
        prepared = prepare_run_data(config)
        data, idx = prepared.data, prepared.indices
        pre = card_for(config).preprocessing  # no model build inside the baseline's time
        augment = config.method != "linear" and "dihedral" in augment_names(config.optim.augment)
        return tuple(ref.FileImages([data.paths[i] for i in rows], data.labels[rows].tolist(), pre,
                                    augment=augment and split == "train")
                     for split, rows in (("train", idx.train), ("val", idx.val),
                                         ("test", idx.test)))  # type: ignore[return-value]


def _train_together(configs: list[TrainConfig], pack_size: int = 8) -> list:
    """cytotune's grouped training of ``configs``; a failed run fails the case."""
    results = run_training_group(configs, pack_size=pack_size)
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


# ---- cases ---------------------------------------------------------------------------------------
def case_features(bench: Bench) -> dict[str, Any]:
    """Feature extraction: a plain forward over normalised in-memory tensors (the ceiling),
    cytotune's extract_features over decoded uint8 images, and the baseline's loader."""
    config = bench.config(method="linear")
    backbone = build_run_backbone(config).to(bench.device).eval()
    pre = backbone.preprocessing
    prepared = prepare_run_data(config)
    paths = list(prepared.data.paths)
    decoded, decode_s, _ = _timed(lambda: ImageStore(None, num_workers=config.num_workers).get(
        paths, resize_size=pre.effective_resize, crop_size=pre.image_size,
        interpolation=pre.interpolation), bench.device)
    pixels = torch.as_tensor(decoded.pixels)
    n = len(pixels)
    batches = [normalise(pixels[i:i + 64], pre.mean, pre.std).to(bench.device)
               for i in range(0, n, 64)]

    @torch.no_grad()
    def plain() -> None:
        for x in batches:
            with autocast_for(bench.device, bench.precision):
                backbone(x)

    plain()  # warm-up (kernels, allocator)
    _, plain_s, plain_mem = _timed(plain, bench.device)
    batches.clear()  # free them before the next measurement
    _, ours_s, ours_mem = _timed(lambda: extract_features(
        backbone, pixels, pre.mean, pre.std, bench.device, precision=bench.precision), bench.device)
    dataset = ref.FileImages(paths, prepared.data.labels.tolist(), pre)
    _, base_s, base_mem = _timed(lambda: ref.reference_features(
        backbone, dataset, 64, bench.s.baseline_workers), bench.device)
    return {"images": n, "decode_once_s": decode_s,
            "plain_forward": {"images_per_s": n / plain_s, "wall_s": plain_s, "memory": plain_mem},
            "cytotune": {"images_per_s": n / ours_s, "wall_s": ours_s, "memory": ours_mem},
            "baseline": {"images_per_s": n / base_s, "wall_s": base_s, "memory": base_mem},
            "cytotune_vs_plain_forward": plain_s / ours_s,
            "speedup_vs_baseline": base_s / ours_s}


def case_linear(bench: Bench) -> dict[str, Any]:
    """A seeds x learning-rates grid of linear probes on all training data: the baseline runs
    each probe alone (its own extraction, JPEG decoding, validation every epoch); cytotune
    trains the grid as one group (one decode, one extraction, all heads batched)."""
    s = bench.s
    grid = [(seed, lr) for seed in s.seeds for lr in s.lrs]
    configs = [bench.config(**{"method": "linear", "seed": seed, "optim.lr": lr,
                               "optim.linear_epochs": s.linear_epochs}) for seed, lr in grid]

    results, ours_s, ours_mem = _timed(lambda: _train_together(configs), bench.device)

    def baseline() -> list[dict[str, float]]:
        out = []
        backbone = build_run_backbone(configs[0]).to(bench.device).eval()
        for config in configs:
            train, val, test = bench.datasets(config)
            out.append(ref.reference_linear_probe(
                backbone, train, val, test, lr=config.optim.lr, epochs=s.linear_epochs,
                batch_size=config.optim.batch_size, seed=config.seed,
                workers=s.baseline_workers, num_classes=len(set(train.labels))))
        return out

    base, base_s, base_mem = _timed(baseline, bench.device)
    ours_acc = [r.metrics["test"]["accuracy"] for r in results]
    return {"runs": len(configs), "epochs": s.linear_epochs,
            "cytotune": {"wall_s": ours_s, "memory": ours_mem,
                         "mean_test_accuracy": sum(ours_acc) / len(ours_acc)},
            "baseline": {"wall_s": base_s, "memory": base_mem,
                         "mean_test_accuracy": sum(b["test_accuracy"] for b in base) / len(base)},
            "speedup_vs_baseline": base_s / ours_s}


def lora_classifier(config: TrainConfig, num_classes: int, seed: int) -> Classifier:
    """The run's backbone with its LoRA layers (A drawn from ``seed``, as the LoRA method draws
    them) and a new head, only LoRA and head trainable, on the CPU: the model the baseline,
    the FLOP count and the memory case train."""
    backbone = build_run_backbone(config)
    lora = config.lora.resolve(backbone.card.default_lora_targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        apply_lora(backbone.model, lora, backbone.card.lora_targets)
    mark_only_lora_trainable(backbone)
    return Classifier(backbone, new_head(backbone.feature_dim, num_classes, seed,
                                         torch.device("cpu")))


def training_step_flops(bench: Bench, config, batch: int) -> float:
    """FLOPs of one LoRA training step (forward + backward of ``batch`` images), counted by
    torch's FlopCounterMode on the run's own model (matmuls and convolutions). Counted for one
    image and scaled: every op is per image, and a ViT-L/14 step at batch 32 would otherwise
    cost seconds of CPU time on a GPU machine."""
    from torch.utils.flop_counter import FlopCounterMode

    model = lora_classifier(config, 2, 0)
    size = model.backbone.preprocessing.image_size
    x = torch.randn(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return float(counter.get_total_flops()) * batch


def _utilisation(flops_per_step: float, steps: int, step_s: float,
                 peak_tflops: Optional[float]) -> dict[str, Any]:
    achieved = flops_per_step * steps / max(step_s, 1e-9) / 1e12
    return {"flops_per_step": flops_per_step, "achieved_tflops": achieved,
            "model_flop_utilisation": achieved / peak_tflops if peak_tflops else None}


def case_lora(bench: Bench) -> dict[str, Any]:
    """One few-shot LoRA run (r=2 on q,v) with the same number of steps both ways."""
    s = bench.s
    config = bench.config(**{"method": "lora", "shots": s.shots, "optim.steps": s.lora_steps,
                             "seed": 1, "optim.lr": 1e-3, "optim.compile": s.compile})
    result, ours_s, ours_mem = _timed(lambda: run_training(config), bench.device)
    t = result.timings
    images = s.lora_steps * min(s.batch_size, len(prepare_run_data(config).indices.train))

    def baseline() -> dict[str, float]:
        train, val, test = bench.datasets(config)
        model = lora_classifier(config, len(result.class_names), config.seed).to(bench.device)
        return ref.reference_lora_run(model, train, val, test, lr=config.optim.lr,
                                      steps=s.lora_steps, batch_size=s.batch_size,
                                      seed=config.seed, workers=s.baseline_workers)

    flops = training_step_flops(bench, config, images // s.lora_steps)
    ours = {"wall_s": ours_s, "memory": ours_mem,
            "train_images_per_s": images / max(t.get("step_s", 0.0), 1e-9),
            "test_accuracy": result.metrics["test"]["accuracy"],
            "data_wait_fraction": t.get("data_s", 0.0) / max(t.get("step_s", 0.0), 1e-9),
            "data_s": t.get("data_s"), "augment": config.optim.augment,
            "validation_s": t.get("validation_s"), "step_s": t.get("step_s")}
    utilisation = _utilisation(flops, s.lora_steps, t.get("step_s", 0.0), s.peak_tflops)
    if s.skip_baseline:
        return {"shots": s.shots, "steps": s.lora_steps, "utilisation": utilisation,
                "cytotune": ours, "baseline": None, "speedup_vs_baseline": None}
    base, base_s, base_mem = _timed(baseline, bench.device)
    return {"shots": s.shots, "steps": s.lora_steps, "utilisation": utilisation,
            "cytotune": ours,
            "baseline": {"wall_s": base_s, "memory": base_mem,
                         "train_images_per_s": images / max(base["train_step_s"], 1e-9),
                         "test_accuracy": base["test_accuracy"],
                         "validation_s": base["validation_s"], "step_s": base["train_step_s"]},
            "speedup_vs_baseline": base_s / ours_s}


def case_packed(bench: Bench) -> dict[str, Any]:
    """K few-shot LoRA runs (seeds x learning rates): one by one vs packed on one backbone."""
    s = bench.s
    grid = [(s.seeds[i % len(s.seeds)], s.lrs[i % len(s.lrs)]) for i in range(s.pack)]
    configs = [bench.config(**{"method": "lora", "shots": s.shots, "optim.steps": s.lora_steps,
                               "seed": seed, "optim.lr": lr}) for seed, lr in grid]
    sequential, seq_s, seq_mem = _timed(lambda: [run_training(c) for c in configs], bench.device)

    packed_results, pack_s, pack_mem = _timed(
        lambda: _train_together(configs, pack_size=len(configs)), bench.device)
    seq_train = sum(r.timings["step_s"] for r in sequential)
    pack_train = sum(r.timings["step_s"] for r in packed_results)  # shares of one loop
    per_run_batch = min(s.batch_size, len(prepare_run_data(configs[0]).indices.train))
    flops = training_step_flops(bench, configs[0], per_run_batch) * len(configs)
    same = max(abs(a.metrics["test"]["accuracy"] - b.metrics["test"]["accuracy"])
               for a, b in zip(sequential, packed_results))
    return {"runs": len(configs), "steps": s.lora_steps,
            "sequential": {"wall_s": seq_s, "train_step_s": seq_train, "memory": seq_mem},
            "packed": {"wall_s": pack_s, "train_step_s": pack_train, "memory": pack_mem},
            "train_throughput_ratio": seq_train / pack_train, "wall_ratio": seq_s / pack_s,
            "utilisation_packed": _utilisation(flops, s.lora_steps, pack_train, s.peak_tflops),
            "utilisation_sequential": _utilisation(flops, s.lora_steps, seq_train, s.peak_tflops),
            "max_test_accuracy_difference": same}


def case_precision(bench: Bench) -> dict[str, Any]:
    """cytotune against itself: the linear grid of ``linear`` and the run of ``lora``, once in
    fp32 and once under bf16 autocast, with every run's test accuracy both ways."""
    s = bench.s
    linear = [{"method": "linear", "seed": seed, "optim.lr": lr,
               "optim.linear_epochs": s.linear_epochs} for seed in s.seeds for lr in s.lrs]
    lora = {"method": "lora", "shots": s.shots, "optim.steps": s.lora_steps, "seed": 1,
            "optim.lr": 1e-3}
    out: dict[str, Any] = {}
    for name, option_sets in (("linear", linear), ("lora", [lora])):
        timed = {}
        for precision in ("fp32", "bf16"):
            configs = [bench.config(**options, precision=precision) for options in option_sets]
            results, wall_s, _ = _timed(lambda: _train_together(configs), bench.device)
            timed[precision] = {"wall_s": wall_s, "test_accuracy": [
                r.metrics["test"]["accuracy"] for r in results]}
        diffs = [abs(a - b) for a, b in zip(timed["fp32"]["test_accuracy"],
                                            timed["bf16"]["test_accuracy"])]
        out[name] = {**timed, "runs": len(option_sets),
                     "bf16_speedup": timed["fp32"]["wall_s"] / timed["bf16"]["wall_s"],
                     "max_test_accuracy_difference": max(diffs),
                     "mean_test_accuracy_difference": sum(diffs) / len(diffs)}
    return out


def case_memory(bench: Bench, steps: int = 2) -> dict[str, Any]:
    """Peak memory of ``steps`` LoRA training steps (forward, backward, AdamW) on random images
    at the bench's batch size, rank, targets and precision, as cytotune's LoRA method builds the
    model. On CUDA the peak of allocated memory (weights included); on a CPU the process's
    resident set, with the resident set before the model was built to subtract."""
    s, device = bench.s, bench.device
    config = bench.config(method="lora", seed=1)
    before = _rss()
    with peak_memory(device) as memory:
        model = lora_classifier(config, 4, config.seed).to(device).train()
        backbone = model.backbone
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, fused=device.type == "cuda")
        size = backbone.preprocessing.image_size
        x = torch.randn(s.batch_size, 3, size, size, device=device)
        y = torch.randint(0, 4, (s.batch_size,), device=device)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            with autocast_for(device, bench.precision):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    lora = config.lora.resolve(backbone.card.default_lora_targets)
    return {"model": backbone.card.name, "batch": s.batch_size, "image_size": size,
            "rank": lora.rank, "targets": list(lora.targets), "precision": bench.precision,
            "lora_parameters": count_lora_parameters(backbone), "steps": steps, "step_s": times, "memory": memory,
            "resident_before_bytes": before if device.type != "cuda" else None}


def case_cache_check(bench: Bench) -> dict[str, Any]:
    """The cost of checking cache entries against their digests, for one cached linear probe
    (decoded pixels and features both on disk: the run whose time the checks weigh most on):
    the same run timed with the checks off, in the default mode ("changed": hash a file only
    when its status changed since its last check) and hashing every entry on every read
    ("always"), in the same process, modes interleaved in rotating order, ``check_repeats``
    times each (medians); and the time spent inside the checks over the fastest unchecked run
    (``check_fraction``), the figure that run-to-run noise neither swamps nor shrinks.
    Also times one full hash of the whole cache (``cytotune cache verify``)."""
    from cytotune.training.cache_verify import verify_cache

    s = bench.s
    cache_dir = bench.workdir / "check-cache"
    config = bench.config(**{"method": "linear", "seed": 1, "optim.lr": 1e-3,
                             "optim.linear_epochs": s.linear_epochs,
                             "cache_dir": str(cache_dir)})
    written = time.perf_counter()
    run_training(config)  # fills both caches
    # files are stamped (then not hashed again) only once their timestamps have settled
    time.sleep(max(0.0, STAMP_SETTLE_NS / 1e9 - (time.perf_counter() - written)) + 0.1)
    with verification("changed"):
        run_training(config)  # untimed: the first check of each entry hashes it and stamps it
    modes = ("off", "changed", "always")
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    checking: dict[str, list[float]] = {mode: [] for mode in modes}
    for repeat in range(s.check_repeats):
        for mode in modes[repeat % 3:] + modes[:repeat % 3]:  # no mode always goes first
            before = check_seconds()
            with verification(mode):
                _, seconds, _ = _timed(lambda: run_training(config), bench.device)
            times[mode].append(seconds)
            checking[mode].append(check_seconds() - before)
    start = time.perf_counter()
    report = verify_cache(cache_dir)
    full_hash_s = time.perf_counter() - start
    median = {mode: statistics.median(values) for mode, values in times.items()}
    # the checks' own (median) time over the fastest unchecked run: other load on the machine
    # can only lengthen runs, so this share is not made smaller by noise
    share = {mode: statistics.median(checking[mode]) / min(times["off"]) for mode in modes}
    sizes = {part: sum(f.stat().st_size for f in (cache_dir / part).rglob("*") if f.is_file())
             for part in ("images", "features")}
    return {"repeats": s.check_repeats, "epochs": s.linear_epochs, "wall_s": times,
            "check_s": checking, "check_fraction": share,
            "median_s": median, "entries": report.good + len(report.bad),
            "cache_bytes": sizes, "full_hash_s": full_hash_s,
            "changed_overhead": median["changed"] / median["off"] - 1,
            "always_overhead": median["always"] / median["off"] - 1,
            "full_hash_fraction": full_hash_s / median["off"]}


CASE_FUNCTIONS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "features": case_features, "linear": case_linear, "lora": case_lora, "packed": case_packed,
    "precision": case_precision, "memory": case_memory, "cache_check": case_cache_check}


def run_benchmark(settings: BenchSettings, cases: tuple[str, ...] = CASES,
                  progress: Optional[Callable[[str, dict[str, Any]], None]] = None,
                  snapshot: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Run the chosen cases; returns a JSON-ready dict (settings, environment, one entry per case).
    ``snapshot`` receives the figures so far after each case, so a run stopped by a time limit
    (a lent GPU's, say) keeps the cases it finished."""
    unknown = [c for c in cases if c not in CASE_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown benchmark case(s) {', '.join(unknown)}; known: "
                         f"{', '.join(CASES + EXTRA_CASES)}")
    with tempfile.TemporaryDirectory(prefix="cytotune-bench-") as tmp:
        bench = Bench(settings, Path(tmp))
        bench.warm_up()
        out: dict[str, Any] = {
            "settings": dataclasses.asdict(settings),
            "environment": {"torch": torch.__version__, "device": str(bench.device),
                            "precision": bench.precision, "baseline_precision": "fp32",
                            "gpu": torch.cuda.get_device_name(bench.device)
                            if bench.device.type == "cuda" else None,
                            "cpu_threads": torch.get_num_threads()},
            "cases": {}}
        for name in cases:
            result = CASE_FUNCTIONS[name](bench)
            out["cases"][name] = result
            if progress is not None:
                progress(name, result)
            if snapshot is not None:
                snapshot(out)
    return out
