"""Linear heads trained together equal the same heads trained one by one with ``fit``."""
from __future__ import annotations

import copy

import pytest
import torch

from cytotune.training.heads import HeadProblem, StackedAdamW, fit_linear_heads
from cytotune.training.loop import evaluate_logits, fit
from cytotune.training.task import SINGLE_LABEL, task_for

CPU = torch.device("cpu")


def _problem(seed: int, n: int, lr: float, steps: int, multi_label: bool = False):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, 6, generator=g)
    if multi_label:
        targets = (torch.rand(n, 3, generator=g) > 0.5).float()
    else:
        targets = torch.randint(0, 3, (n,), generator=g)
    val_x, val_y = feats[: n // 2] + 0.1, targets[: n // 2]
    task = task_for(multi_label)
    torch.manual_seed(seed)
    head = torch.nn.Linear(6, 3)

    def validate(h):
        return evaluate_logits(h, lambda idx: val_x[idx], val_y, 64, task)

    return HeadProblem(head=head, features=feats, targets=targets, validate=validate, lr=lr,
                       weight_decay=1e-2, batch_size=8, steps=steps, warmup_fraction=0.1,
                       val_every=3, seed=seed), task


@pytest.mark.parametrize("multi_label", [False, True])
def test_grouped_heads_equal_heads_fitted_alone(multi_label):
    # different seeds, sizes (one smaller than the batch), learning rates and step counts
    specs = [(1, 20, 1e-2, 12), (2, 5, 1e-1, 7), (3, 33, 3e-2, 15)]
    made = [_problem(*s, multi_label=multi_label) for s in specs]
    task = made[0][1]
    alone = []
    for problem, _ in made:
        head = copy.deepcopy(problem.head)

        def loss_of(idx, head=head, p=problem):
            return task.loss(head(p.features[idx]), p.targets[idx])

        history = fit(head, loss_of, len(problem.targets), lambda h=head, p=problem: p.validate(h),
                      lr=problem.lr, weight_decay=problem.weight_decay,
                      batch_size=problem.batch_size, steps=problem.steps,
                      warmup_fraction=problem.warmup_fraction, val_every=problem.val_every,
                      seed=problem.seed, device=CPU)
        alone.append((head, history))
    histories = fit_linear_heads([p for p, _ in made], CPU, task)
    for (problem, _), (head, history), grouped in zip(made, alone, histories):
        torch.testing.assert_close(problem.head.weight, head.weight, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(problem.head.bias, head.bias, atol=1e-6, rtol=1e-5)
        assert grouped.best_step == history.best_step
        assert grouped.steps == problem.steps
        assert [e["step"] for e in grouped.evaluations] == [e["step"] for e in history.evaluations]
        for a, b in zip(grouped.evaluations, history.evaluations):
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)


def test_heads_of_different_shapes_are_refused():
    (a, _), (b, _) = _problem(1, 10, 1e-2, 3), _problem(2, 10, 1e-2, 3)
    b.head = torch.nn.Linear(6, 4)
    with pytest.raises(ValueError, match="share their shape"):
        fit_linear_heads([a, b], CPU, SINGLE_LABEL)


def test_stacked_adamw_equals_torch_adamw_per_head():
    # three heads with their own lr and weight decay; the last is frozen (lr 0) after 3 steps
    torch.manual_seed(0)
    heads = [torch.nn.Linear(5, 3) for _ in range(3)]
    lrs, decays = [1e-2, 3e-2, 1e-1], [0.0, 1e-2, 0.5]
    reference = [copy.deepcopy(h) for h in heads]
    optimizers = [torch.optim.AdamW(h.parameters(), lr=lr, weight_decay=wd)
                  for h, lr, wd in zip(reference, lrs, decays)]
    weight = torch.stack([h.weight.detach() for h in heads]).requires_grad_()
    bias = torch.stack([h.bias.detach() for h in heads]).requires_grad_()
    stacked = StackedAdamW([weight, bias], torch.tensor(decays))
    for step in range(6):
        x = torch.randn(3, 4, 5)
        active = [0, 1, 2] if step < 3 else [0, 1]
        for k in active:
            optimizers[k].zero_grad()
            reference[k](x[k]).square().mean().backward()
            optimizers[k].step()
        weight.grad = bias.grad = None
        sum(torch.addmm(bias[k], x[k], weight[k].T).square().mean() for k in active).backward()
        stacked.step(torch.tensor([lr if k in active else 0.0 for k, lr in enumerate(lrs)]))
    for k, head in enumerate(reference):
        torch.testing.assert_close(weight[k], head.weight, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(bias[k], head.bias, atol=1e-6, rtol=1e-5)
