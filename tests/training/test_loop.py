import torch
import torch.nn.functional as F

from cytotune.training.loop import EvalResult, fit


def test_fit_restores_the_best_validated_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()
    seen = []

    def loss_of(idx):
        return F.cross_entropy(model(x[idx]), y[idx])

    calls = {"n": 0}

    def validate():
        # pretend the model was best at the second evaluation
        calls["n"] += 1
        seen.append(model.weight.detach().clone())
        acc = 1.0 if calls["n"] == 2 else 0.5
        return EvalResult(probs=torch.zeros(1, 2), labels=torch.zeros(1, dtype=torch.long),
                          loss=1.0, accuracy=acc)

    history = fit(model, loss_of, 64, validate, lr=0.1, weight_decay=0.0, batch_size=16, steps=20,
                  warmup_fraction=0.0, val_every=5, seed=0, device=torch.device("cpu"))
    assert history.best_step == 10
    assert torch.equal(model.weight.detach(), seen[1])
    assert len(history.evaluations) == 4
