"""The one optimisation loop behind every trainable method.

Linear probes (on cached features) and LoRA / fine-tuning (on images) differ only in what a batch
is and which parameters train; the loop itself — AdamW, warm-up + cosine, validation on a
schedule rather than after every step, the best state kept in memory and restored at the end —
is written once here.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Optional

import torch

from cytotune.training.progress import observer
from cytotune.training.schedule import warmup_cosine
from cytotune.training.task import SINGLE_LABEL, Task

log = logging.getLogger(__name__)

# ---- which run a log line belongs to ------------------------------------------------------------
# Runs trained as a group (cytotune.training.group) log from one thread into one logger, and each
# has its own train.log. A line logged while a run is "current" belongs to that run alone; a line
# logged while none is (reading the data set, decoding, feature extraction shared by the group)
# belongs to every run of the group.
_CURRENT_RUN: contextvars.ContextVar[Optional[Hashable]] = contextvars.ContextVar(
    "cytotune_current_run", default=None)


def current_run() -> Optional[Hashable]:
    """The key of the run the code is working for now (None: shared work or a run alone)."""
    return _CURRENT_RUN.get()


def set_current_run(key: Optional[Hashable]) -> None:
    """Make ``key`` the current run until the next call (for callbacks that cannot wrap the
    code that logs after them; prefer :func:`run_scope`)."""
    _CURRENT_RUN.set(key)


@contextlib.contextmanager
def run_scope(key: Optional[Hashable]) -> Iterator[None]:
    """Lines logged inside belong to run ``key`` only."""
    token = _CURRENT_RUN.set(key)
    try:
        yield
    finally:
        _CURRENT_RUN.reset(token)


class RunLogFilter(logging.Filter):
    """Lets through a handler only the lines of run ``key`` and the lines of no run, logged by
    the thread that made the filter (a group trains in one thread; another thread's lines, e.g.
    a second sweep in the same process, belong to its own runs)."""

    def __init__(self, key: Hashable):
        super().__init__()
        self.key = key
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return False
        run = _CURRENT_RUN.get()
        return run is None or run == self.key


@dataclass
class EvalResult:
    """Probabilities and labels of one evaluation pass, with the two numbers used for selection."""

    probs: torch.Tensor  # (N, C) float32, CPU
    labels: torch.Tensor  # (N,) int64, CPU; multi-label: (N, C) float 0/1 targets
    loss: float
    accuracy: float
    score: Optional[float] = None  # the task's selection score; None: accuracy

    @property
    def selection_score(self) -> float:
        return self.accuracy if self.score is None else self.score


@dataclass
class FitHistory:
    steps: int = 0
    best_step: int = 0
    best_val_accuracy: float = -math.inf  # the best selection score (accuracy by default)
    best_val_loss: float = math.inf
    seconds: float = 0.0
    evaluations: list[dict] = field(default_factory=list)
    # where the time went: preparing batches (index, copy to the device, augment), the
    # optimisation steps including that preparation, and validation passes
    data_seconds: float = 0.0
    step_seconds: float = 0.0
    validation_seconds: float = 0.0

    def timings(self) -> dict[str, float]:
        return {"training_s": self.seconds, "data_s": self.data_seconds,
                "step_s": self.step_seconds, "validation_s": self.validation_seconds}


class BestState:
    """The best-validated state of a set of tensors, kept in memory.

    Selection is by the task's score (validation accuracy by default), ties broken by lower
    validation loss: few-shot validation sets are small, so ties are common. Shared by the
    single-run loop and the grouped trainers, so every way of training selects the same step.
    """

    def __init__(self, tensors: Callable[[], dict[str, torch.Tensor]]):
        self._tensors = tensors  # the live tensors to copy on improvement (name -> tensor)
        self.state: Optional[dict[str, torch.Tensor]] = None

    def offer(self, history: FitHistory, step: int, result: EvalResult) -> bool:
        score = result.selection_score
        better = (score > history.best_val_accuracy
                  or (score == history.best_val_accuracy and result.loss < history.best_val_loss))
        if better:
            history.best_val_accuracy, history.best_val_loss = score, result.loss
            history.best_step = step
            self.state = {n: t.detach().clone() for n, t in self._tensors().items()}
        return better

    def restore(self, history: FitHistory, live: dict[str, torch.Tensor]) -> None:
        """Copy the best state back into ``live`` (or record the last step as best if none)."""
        if self.state is None:
            history.best_step = history.steps
            return
        with torch.no_grad():
            for n, value in self.state.items():
                live[n].copy_(value)


def record_evaluation(history: FitHistory, step: int, steps: int, train_loss: float,
                      result: EvalResult) -> None:
    history.evaluations.append({"step": step, "train_loss": train_loss, "val_loss": result.loss,
                                "val_accuracy": result.accuracy,
                                **({} if result.score is None else {"val_score": result.score})})
    log.info("step %d/%d  train loss %.4f  val loss %.4f  val acc %.4f", step, steps, train_loss,
             result.loss, result.accuracy)
    observer().evaluation(step, {"val_accuracy": result.accuracy, "val_loss": result.loss,
                                 **({} if result.score is None else {"val_score": result.score})})


def batch_order(num_items: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches: a fresh seeded permutation every epoch, last partial batch kept."""
    while True:
        perm = torch.randperm(num_items, generator=generator)
        for start in range(0, num_items, batch_size):
            yield perm[start:start + batch_size]


def evaluate_logits(logits_fn: Callable[[torch.Tensor], torch.Tensor], inputs_fn, labels: torch.Tensor,
                    batch_size: int, task: Task = SINGLE_LABEL) -> EvalResult:
    """Run ``logits_fn`` over ``inputs_fn(index_batch)`` in batches without gradients."""
    probs, losses = [], 0.0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(labels)))
            logits = logits_fn(inputs_fn(idx)).float()
            y = labels[idx].to(logits.device)
            losses += task.loss(logits, y, reduction="sum").item()
            probs.append(task.probabilities(logits).cpu())
    p = torch.cat(probs)
    loss = losses / max(1, len(labels))
    y_all = labels.cpu()
    return EvalResult(probs=p, labels=y_all, loss=loss, accuracy=task.accuracy(p, y_all),
                      score=task.score(p, y_all, loss) if task.multi_label else None)


def fit(module: torch.nn.Module, train_step_loss: Callable[[Any], torch.Tensor],
        num_train: int, validate: Optional[Callable[[], EvalResult]], *, lr: float,
        weight_decay: float, batch_size: int, steps: int, warmup_fraction: float,
        val_every: Optional[int], seed: int, device: torch.device,
        param_groups: Optional[list[dict]] = None,
        fetch: Optional[Callable[[torch.Tensor], Any]] = None) -> FitHistory:
    """Train the parameters of ``module`` that require grad; restore the best-validated state.

    ``train_step_loss(batch)`` returns the loss of one batch of training items, where the batch
    is ``fetch(index_batch)`` when ``fetch`` is given (its time is the data wait the history
    reports) and the index batch itself otherwise. Validation runs every ``val_every`` steps and
    at the end; selection is :class:`BestState`'s. ``param_groups`` (AdamW groups, each with its
    own "lr") replace the single group at ``lr``: full fine-tuning gives the backbone and the
    head, or each depth, its own rate. Buffers (batch-norm statistics) are kept with the best
    state too.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    groups = param_groups if param_groups is not None else [{"params": params}]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay,
                                  fused=device.type == "cuda")
    scheduler = warmup_cosine(optimizer, steps, round(warmup_fraction * steps))
    generator = torch.Generator().manual_seed(seed)
    order = batch_order(num_train, min(batch_size, num_train), generator)
    every = val_every or max(1, steps // 10)
    history = FitHistory()
    trainable_names = [n for n, p in module.named_parameters() if p.requires_grad]
    best = BestState(lambda: _snapshot(module, trainable_names))
    start = time.perf_counter()
    progress = observer()
    progress.phase("training", steps)

    module.train()
    # the next batch is prepared on one background thread while this step computes (gather,
    # copy, augment, normalise), as a data loader's worker would: in order, so the batches and
    # the augmentation draws are those of fetching inline; the data wait is what is left of it
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cytotune-batch") \
        if fetch is not None else None

    def prepare(idx: torch.Tensor):  # in the caller's context: log lines keep their run
        return worker.submit(contextvars.copy_context().run, fetch, idx)

    upcoming = prepare(next(order)) if worker is not None else None
    try:
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            if worker is not None:
                batch = upcoming.result()
                history.data_seconds += time.perf_counter() - t0
                if step < steps:
                    upcoming = prepare(next(order))
            else:
                batch = next(order)
            loss = train_step_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            history.step_seconds += time.perf_counter() - t0
            history.steps = step
            if validate is not None and (step % every == 0 or step == steps):
                t1 = time.perf_counter()
                module.eval()
                result = validate()
                module.train()
                record_evaluation(history, step, steps, float(loss.detach()), result)
                best.offer(history, step, result)
                history.validation_seconds += time.perf_counter() - t1
            progress.step(step, steps)
    finally:
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)
    progress.phase("evaluation")
    module.eval()
    best.restore(history, {**dict(module.named_parameters()), **dict(module.named_buffers())})
    history.seconds = time.perf_counter() - start
    return history


def _snapshot(module: torch.nn.Module, trainable_names: list[str]) -> dict[str, torch.Tensor]:
    """The trainable parameters and the buffers that training may change (live tensors)."""
    params_by_name = dict(module.named_parameters())
    state = {n: params_by_name[n] for n in trainable_names}
    for n, buffer in module.named_buffers():
        if buffer.is_floating_point() or n.endswith("num_batches_tracked"):
            state[n] = buffer
    return state
