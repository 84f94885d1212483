"""Scale benchmark (issue 18): does every stage of cytotune cost the same per image (or per store
row) at N = 1k, 10k and 50k images as it does at 1k?

    PYTHONPATH=src .venv/bin/python scripts/bench_scale.py --sizes 1000,10000,50000 --json scale.json

For each N it times, one line per stage, and records the peak resident set (RSS) of the stage:

- ``index_folder`` / ``index_csv``: reading and indexing the data set (class folders; a CSV);
- ``split_sample``: the seeded split plus few-shot (16 per class, 3 seeds) and 10 % samples;
- ``decode_cache``: building the decoded-image cache (cold cache: every image decoded, stored);
- ``plain_forward`` / ``features``: the backbone over normalised in-memory batches (the ceiling)
  and cytotune's extraction into the per-image feature bank, images/s of both;
- ``linear_all`` / ``linear_10pct``: a 3 seeds x 5 learning rates linear-probe grid on all
  training images and on a 10 % fraction (features from the bank);
- ``lora_fraction``: one LoRA run on a 10 % fraction: its data path and data wait share;
- ``bank_1_chunk`` / ``bank_32_chunks``: reading N features (1280-d, fp32) for a linear probe
  from a feature bank holding them in one chunk file, and in 32 (the most before a merge): all
  N, then a 10 % sample; their peak RSS shows whether a lookup's memory follows the chunks;
- ``plan`` / ``store_write`` / ``report``: planning a 1,440-run sweep, writing N/5 result rows
  (10,000 at N = 50k, each with 100 per-image test predictions) through the store's API, and
  ``cytotune report`` over them (its bootstrap intervals and paired comparisons included).

Images come from the demo generator (``cytotune.data.synthetic.render_image``) at ``--stored-size``
px, saved as JPEG once under ``--work`` and reused by later runs: the largest N is drawn and each
smaller N hard-links a prefix of it. Every stage runs in a fresh subprocess (``--in-process``:
in this one, for tests), and its peak RSS is the high-water mark after a reset
(``/proc/self/clear_refs``), so a stage is charged neither for imports nor for earlier stages.
The last table gives, per stage, the per-item cost at the largest N over that at the smallest:
linear scaling is 1.0, and the target is <= 1.25.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

IMAGE_STAGES = ("index_folder", "index_csv", "split_sample", "decode_cache", "plain_forward",
                "features", "linear_all", "linear_10pct", "lora_fraction")
STORE_STAGES = ("plan", "store_write", "report")
TEST_IMAGES = [f"test/{j:03d}.png" for j in range(100)]  # the store-stage runs' test set
CLASSES = ["a", "b", "c", "d"]
BANK_STAGES = ("bank_1_chunk", "bank_32_chunks")
BANK_DIM = 1280  # EfficientNet-Lite0's feature size
STAGES = IMAGE_STAGES + BANK_STAGES + STORE_STAGES
CLASSES = ("normal", "low_grade", "high_grade", "carcinoma")
TARGET_RATIO = 1.25
REPORT_TARGET_S = 30.0
PLAN_RUNS = 1440


# ---- data ----------------------------------------------------------------------------------------
def _draw(root: Path, n: int, size: int) -> None:
    """``n`` demo-generator JPEGs in ``root/<class>/``, class by image index modulo 4."""
    import numpy as np
    from PIL import Image

    from cytotune.data.synthetic import render_image, style_for

    styles = [style_for(i / (len(CLASSES) - 1)) for i in range(len(CLASSES))]
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % len(CLASSES)
        path = root / CLASSES[c] / f"{CLASSES[c]}_{i:06d}.jpg"
        if not path.exists():
            pixels = render_image(styles[c], size, np.random.default_rng([0, c, i]))
            Image.fromarray(pixels).save(path, quality=90)


def prepare_data(work: Path, sizes: list[int], size: int) -> dict[int, Path]:
    """One folder per N (``work/data-N-<size>px``, with a ``labels.csv`` beside the class folders);
    reused when complete."""
    largest = max(sizes)
    pool = work / f"pool-{size}px"
    marker = pool / f".complete-{largest}"
    if not marker.exists():
        start = time.perf_counter()
        _draw(pool, largest, size)
        marker.touch()
        print(f"drew {largest} images in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    out = {}
    for n in sizes:
        root = work / f"data-{n}-{size}px"
        done = root / ".complete"
        if not done.exists():
            rows = ["path,label"]
            for i in range(n):
                name = CLASSES[i % len(CLASSES)]
                rel = f"{name}/{name}_{i:06d}.jpg"
                (root / name).mkdir(parents=True, exist_ok=True)
                if not (root / rel).exists():
                    os.link(pool / rel, root / rel)  # hard link: same bytes, no extra space
                rows.append(f"{rel},{name}")
            (root / "labels.csv").write_text("\n".join(rows) + "\n")
            done.touch()
        out[n] = root
    return out


# ---- measuring -----------------------------------------------------------------------------------
def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux); False where it cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn: Callable[[], dict[str, Any]], repeats: int = 1) -> dict[str, Any]:
    """Run ``fn`` (returns at least ``items``); add wall seconds (the best of ``repeats``: a
    stage of a few milliseconds at 1k is otherwise timer and cache noise), RSS before and peak
    RSS."""
    import gc

    gc.collect()
    reset = _reset_peak()
    before = _current_rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return {**out, "seconds": min(times), "repeats": repeats, "rss_before_bytes": before,
            "peak_rss_bytes": _peak_rss(), "peak_is_stage_only": reset}


# ---- stages (run in the child) ---------------------------------------------------------------------
class Context:
    """What a stage needs: the data set of size ``n`` and the run settings."""

    def __init__(self, args: argparse.Namespace, n: int):
        self.args, self.n = args, n
        self.work = Path(args.work)
        self.root = self.work / f"data-{n}-{args.stored_size}px"
        self.csv = self.root / "labels.csv"  # paths relative to it
        self.out = self.work / f"run-{n}"
        self.cache = self.out / "cache"
        self.weights = self.work / f"weights-{args.model.replace(':', '_')}-{args.image_size}.safetensors"

    def config(self, **options: Any):
        from cytotune.training.config import TrainConfig, set_dotted

        values: dict[str, Any] = {}
        given = {"data.source": str(self.root), "model.name": self.args.model,
                 "model.image_size": self.args.image_size or None, "model.weights": str(self.weights),
                 "device": "cpu", "precision": self.args.precision,
                 "cache_dir": str(self.cache), "optim.batch_size": 32}
        for key, value in {**given, **options}.items():
            set_dotted(values, key, value)
        return TrainConfig.from_dict(values)

    def ensure_weights(self) -> None:
        """A random-init checkpoint file shared by every stage (the runs' feature bank is keyed
        by the weights' fingerprint, as with pretrained weights)."""
        if self.weights.exists():
            return
        from safetensors.torch import save_file

        from cytotune.training.runner import build_run_backbone

        backbone = build_run_backbone(self.config(**{"model.pretrained": False,
                                                     "model.weights": None}))
        tmp = self.weights.with_suffix(".tmp")
        save_file({k: v.contiguous().clone() for k, v in backbone.model.state_dict().items()},
                  str(tmp))
        tmp.replace(self.weights)


def _grid(ctx: Context, **options: Any) -> dict[str, Any]:
    from cytotune.training.group import run_training_group

    configs = [ctx.config(**{"method": "linear", "seed": seed, "optim.lr": lr,
                             "optim.linear_epochs": ctx.args.linear_epochs, **options})
               for seed in (1, 2, 3) for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)]
    results = run_training_group(configs)
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise failed[0]
    timings = results[0].timings
    return {"items": ctx.n, "runs": len(configs), "chunks": _chunks(ctx),
            "timings_run0": {k: float(v) for k, v in timings.items()}}


def _chunks(ctx: Context) -> int:
    return len(list((ctx.cache / "features").rglob("*.safetensors")))


def run_stage(name: str, ctx: Context) -> dict[str, Any]:
    """Set up (untimed) and measure one stage."""
    import numpy as np

    from cytotune.data import ImageStore, few_shot, fraction, make_splits, read_csv, read_folder

    if name == "index_folder":
        return measure(lambda: {"items": len(read_folder(ctx.root))}, repeats=3)
    if name == "index_csv":
        return measure(lambda: {"items": len(read_csv(ctx.csv))}, repeats=3)
    if name == "split_sample":
        data = read_folder(ctx.root)

        def split() -> dict[str, Any]:
            idx = make_splits(data, seed=0)
            labels = np.asarray(data.labels)
            for seed in (1, 2, 3):
                few_shot(labels, idx.train, min(16, ctx.n // 40), seed, data.class_names)
                fraction(labels, idx.train, 10.0, seed)
            return {"items": len(data)}
        return measure(split, repeats=3)

    from cytotune.training.runner import card_for, run_training

    ctx.ensure_weights()
    pre = card_for(ctx.config(method="linear")).preprocessing
    paths = list(read_folder(ctx.root).paths)

    def decode(cache: Optional[Path]):
        return ImageStore(cache, num_workers=2).get(
            paths, resize_size=pre.effective_resize, crop_size=pre.image_size,
            interpolation=pre.interpolation)

    if name == "decode_cache":
        import shutil

        shutil.rmtree(ctx.cache, ignore_errors=True)  # cold: every image decoded and stored
        return measure(lambda: {"items": len(decode(ctx.cache / "images"))})
    if name == "plain_forward":
        import torch

        from cytotune.training.augment import normalise
        from cytotune.training.features import autocast_for, resolve_precision
        from cytotune.training.runner import build_run_backbone

        backbone = build_run_backbone(ctx.config(method="linear")).eval()
        pixels = torch.as_tensor(np.asarray(decode(ctx.cache / "images").pixels))
        precision = resolve_precision(torch.device("cpu"), ctx.args.precision)

        @torch.no_grad()
        def plain() -> dict[str, Any]:
            for i in range(0, len(pixels), 64):
                with autocast_for(torch.device("cpu"), precision):
                    backbone(normalise(pixels[i:i + 64], pre.mean, pre.std))
            return {"items": len(pixels)}
        return measure(plain)
    if name == "features":
        import shutil

        shutil.rmtree(ctx.cache / "features", ignore_errors=True)  # cold bank
        # one linear run of one step: the run's own path fills the per-image feature bank

        def extract() -> dict[str, Any]:
            result = run_training(ctx.config(**{"method": "linear", "seed": 1, "optim.steps": 1}))
            return {"items": ctx.n, "chunks": _chunks(ctx),
                    "timings_run0": {k: float(v) for k, v in result.timings.items()}}
        return measure(extract)
    if name == "linear_all":
        return measure(lambda: _grid(ctx))
    if name == "linear_10pct":
        return measure(lambda: _grid(ctx, fraction=10.0))
    if name == "lora_fraction":
        steps = ctx.args.lora_steps

        def lora() -> dict[str, Any]:
            result = run_training(ctx.config(**{
                "method": "lora", "fraction": 10.0, "seed": 1, "optim.lr": 1e-3,
                "optim.steps": steps, "optim.val_every": steps}))
            t = {k: float(v) for k, v in result.timings.items()}
            return {"items": ctx.n, "timings_run0": t,
                    "data_wait_fraction": t.get("data_s", 0.0) / max(t.get("step_s", 0.0), 1e-9)}
        return measure(lora)
    raise ValueError(f"unknown stage {name}")


def run_bank_stage(name: str, ctx: Context) -> dict[str, Any]:
    """A feature bank of N random features in 1 or 32 chunks (set up untimed, once), then the
    lookups a linear probe on all images and on a 10 % fraction make."""
    import numpy as np
    import torch

    from cytotune.training.feature_bank import FeatureBank

    chunks = 1 if name == "bank_1_chunk" else 32
    bank = FeatureBank(ctx.out / f"bank-{chunks}")
    bank.MAX_CHUNKS = chunks  # no merge while it is built
    keys = [f"image-{i}" for i in range(ctx.n)]
    if not list(bank.folder.glob("*.safetensors")):
        gen = torch.Generator().manual_seed(0)
        for part in np.array_split(np.arange(ctx.n), chunks):
            feats = torch.randn(len(part), BANK_DIM, generator=gen)
            bank._write_chunk(feats, [bank.key_bytes(keys[i]) for i in part])
    sample = [keys[i] for i in np.random.default_rng(1).permutation(ctx.n)[:max(1, ctx.n // 10)]]

    def never(_pixels):
        raise AssertionError("every image is held")

    def lookups() -> dict[str, Any]:
        every, _, hit_all = bank.features(keys, torch.empty(ctx.n, 0), never)
        tenth, _, hit_tenth = bank.features(sample, torch.empty(len(sample), 0), never)
        assert hit_all and hit_tenth and every.shape == (ctx.n, BANK_DIM)
        return {"items": ctx.n, "chunks": chunks}
    return measure(lookups)


def run_store_stage(name: str, ctx: Context) -> dict[str, Any]:
    """Planning, store writes and the report: no images needed (rows made from a planned grid)."""
    from cytotune.experiments.store import ResultStore
    from cytotune.experiments.sweep import load_sweep
    from cytotune.training.group import plan_groups

    rows = max(1, ctx.n // 5)
    store_path = ctx.out / "store.sqlite"

    def planned():
        names = {f"set{i}": {"source": str(ctx.root)} for i in range(3)}
        sweep = load_sweep({"name": "scale", "datasets": names,
                            "backbones": ["timm:vit_tiny_patch16_224", "efficientnet-lite0"],
                            "method": ["linear", "lora"], "shots": [1, 2, 4, 8, 16, 32, 64, 128],
                            "seeds": [1, 2, 3], "lrs": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
                            "base": {"model": {"image_size": 64}, "device": "cpu"}},
                           check_models=False)
        runs = sweep.runs()
        plan_groups([r.config for r in runs], 8)
        return runs

    if name == "plan":
        return measure(lambda: {"items": len(planned())})
    if name == "store_write":
        runs = planned()
        store_path.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(store_path) + suffix).unlink(missing_ok=True)
        store_path.parent.mkdir(parents=True, exist_ok=True)

        def write() -> dict[str, Any]:
            store = ResultStore(store_path)
            batch = []
            for i in range(rows):
                run, copy = runs[i % len(runs)], i // len(runs)
                acc = 0.25 + 0.7 * ((i * 7919) % 1000) / 1000
                metrics = {s: {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc,
                               "loss": 1 - acc, "n": 100} for s in ("val", "test")}
                # 100 test images in 4 classes, the first round(100 * acc) right: as a run
                # records them, so the report's bootstrap over test images is measured too
                right = round(100 * acc)
                labels = [j % 4 for j in range(100)]
                predicted = [c if j < right else (c + 1) % 4 for j, c in enumerate(labels)]
                batch.append({**run.key_fields(), "run_id": f"{run.run_id}-{copy}",
                              "sweep": f"scale{copy}", "config": run.config.to_dict(),
                              "metrics": metrics, "timings": {"total_s": 1.0},
                              "trainable_parameters": {"total": 1000},
                              "predictions": {"images": TEST_IMAGES, "classes": CLASSES,
                                              "labels": labels, "predicted": predicted}})
                if len(batch) == 64:  # a sweep records runs as they finish, in small batches
                    store.insert_many(batch)
                    batch.clear()
            store.insert_many(batch)
            return {"items": len(store)}
        return measure(write)
    if name == "report":
        from cytotune.experiments.cli import main as experiments_main

        out = ctx.out / "report"

        def report() -> dict[str, Any]:
            code = experiments_main(["report", str(store_path), "--out", str(out)])
            if code:
                raise RuntimeError(f"cytotune report exited with {code}")
            return {"items": len(ResultStore(store_path))}
        return measure(report)
    raise ValueError(f"unknown stage {name}")


# ---- the driver ------------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> dict[str, Any]:
    ctx = Context(args, args.n)
    ctx.out.mkdir(parents=True, exist_ok=True)
    fn = run_store_stage if args.stage in STORE_STAGES else \
        run_bank_stage if args.stage in BANK_STAGES else run_stage
    return fn(args.stage, ctx)


def _child_argv(args: argparse.Namespace, stage: str, n: int) -> list[str]:
    return [sys.executable, __file__, "--stage", stage, "--n", str(n), "--work", args.work,
            "--model", args.model, "--image-size", str(args.image_size),
            "--stored-size", str(args.stored_size), "--precision", args.precision,
            "--linear-epochs", str(args.linear_epochs), "--lora-steps", str(args.lora_steps)]


def one(args: argparse.Namespace, stage: str, n: int) -> dict[str, Any]:
    if args.in_process:
        ns = argparse.Namespace(**{**vars(args), "stage": stage, "n": n})
        return child(ns)
    proc = subprocess.run(_child_argv(args, stage, n), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"stage {stage} at N={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratios(results: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Optional[float]]:
    """Per stage: per-item cost at the largest N over that at the smallest."""
    sizes = sorted(results)
    out: dict[str, Optional[float]] = {}
    for stage in STAGES:
        have = [n for n in sizes if stage in results[n]]
        if len(have) < 2:
            continue  # a stage that ran at one N only
        lo, hi = results[have[0]][stage], results[have[-1]][stage]
        out[stage] = (hi["seconds"] / hi["items"]) / (lo["seconds"] / lo["items"])
    return out


def print_tables(results: dict[int, dict[str, dict[str, Any]]],
                 ratio: dict[str, Optional[float]]) -> None:
    """One line per (N, stage): wall, per-item cost, peak RSS and its growth over the RSS the
    stage started from (+MiB: imports and set-up excluded); then the ratios."""
    sizes = sorted(results)
    print(f"{'stage':14} {'N':>7} {'items':>7} {'wall s':>9} {'us/item':>10} {'items/s':>10} "
          f"{'peak RSS MiB':>13} {'+MiB':>6}  notes")
    for n in sizes:
        for stage in STAGES:
            r = results[n].get(stage)
            if r is None:
                continue
            per = r["seconds"] / max(r["items"], 1)
            notes = []
            if "data_wait_fraction" in r:
                notes.append(f"data wait {100 * r['data_wait_fraction']:.1f} %")
            if "chunks" in r:
                notes.append(f"{r['chunks']} feature chunk(s)")
            t = r.get("timings_run0") or {}
            if stage == "features" and "feature_extraction_s" in t:
                notes.append(f"extraction {r['items'] / max(t['feature_extraction_s'], 1e-9):.0f} img/s")
            if stage == "report" and r["items"] >= 10000:
                notes.append("OK (<30 s)" if r["seconds"] < REPORT_TARGET_S else "OVER 30 s")
            print(f"{stage:14} {n:>7} {r['items']:>7} {r['seconds']:>9.3f} {1e6 * per:>10.1f} "
                  f"{r['items'] / max(r['seconds'], 1e-9):>10.1f} "
                  f"{r['peak_rss_bytes'] / 2**20:>13.0f} "
                  f"{(r['peak_rss_bytes'] - r['rss_before_bytes']) / 2**20:>6.0f}  {'; '.join(notes)}")
    if ratio:
        print(f"\nper-item cost, N={sizes[-1]} over N={sizes[0]} (target <= {TARGET_RATIO}):")
        for stage, value in ratio.items():
            flag = "ok" if value is not None and value <= TARGET_RATIO else "OVER"
            print(f"ratio {stage:14} {value:7.2f}  {flag}")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,50000", help="N, comma-separated")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    p.add_argument("--work", default="/tmp/cytotune-scale", help="generated data, caches, stores")
    p.add_argument("--model", default="efficientnet-lite0",
                   help="random weights (cytotune's timm ViTs keep their card's input size, so "
                        "a ViT-Tiny would run at 224 px: too slow for 50k images on a CPU)")
    p.add_argument("--image-size", type=int, default=64, help="the model's input size (0: the card's)")
    p.add_argument("--stored-size", type=int, default=112, help="generated images' size (px)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--linear-epochs", type=int, default=3)
    p.add_argument("--lora-steps", type=int, default=20)
    p.add_argument("--in-process", action="store_true", help="no subprocess per stage (tests)")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--print-json", metavar="FILE", help="print the tables of a saved --json")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.print_json:
        print_saved(args.print_json)
        return 0
    if args.stage:  # a child: one stage, its figures as the last line of stdout
        print(json.dumps(child(args)))
        return 0
    sizes = sorted(int(s) for s in args.sizes.split(","))
    stages = [s for s in STAGES if s in args.stages.split(",")]
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        p.error(f"unknown stage(s) {sorted(unknown)}; known: {', '.join(STAGES)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if set(stages) & set(IMAGE_STAGES):
        prepare_data(work, sizes, args.stored_size)
    results: dict[int, dict[str, dict[str, Any]]] = {}
    load_before = os.getloadavg()
    for n in sizes:
        results[n] = {}
        for stage in stages:
            results[n][stage] = one(args, stage, n)
            r = results[n][stage]
            print(f"[N={n}] {stage}: {r['seconds']:.2f} s, peak RSS "
                  f"{r['peak_rss_bytes'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
            save(args, results, load_before)  # after every stage: a stopped run keeps them
    print_tables(results, ratios(results))
    save(args, results, load_before)
    return 0


def save(args: argparse.Namespace, results: dict[int, dict[str, dict[str, Any]]],
         load_before: tuple[float, float, float]) -> None:
    """Every figure so far as JSON (``--json``), with the machine's load before and now."""
    if not args.json:
        return
    Path(args.json).write_text(json.dumps(
        {"settings": {k: v for k, v in vars(args).items() if k not in ("stage", "n")},
         "load_average_before": load_before, "load_average_now": os.getloadavg(),
         "cpus": os.cpu_count(), "results": {str(n): r for n, r in results.items()},
         "ratio_largest_over_smallest": ratios(results)}, indent=1))


def print_saved(path: str) -> None:
    """The tables of a saved ``--json`` file (a run stopped part way included)."""
    saved = json.loads(Path(path).read_text())
    results = {int(n): r for n, r in saved["results"].items()}
    print_tables(results, ratios(results))


if __name__ == "__main__":
    sys.exit(main())
