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


def test_batches_are_prepared_ahead_on_one_thread_and_train_as_inline_fetching():
    """With ``fetch``, the next batch is prepared on a background thread during the step: the
    same batches in the same order (a seeded draw inside fetch included) as fetching inline
    in the loss, hence the same weights; exactly ``steps`` batches are fetched."""
    import threading

    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))

    def run(prefetch: bool):
        torch.manual_seed(1)
        model = torch.nn.Linear(5, 3)
        noise = torch.Generator().manual_seed(7)  # an augmentation's own generator
        seen, threads = [], set()

        def fetch(idx):
            seen.append(idx.tolist())
            threads.add(threading.current_thread().name)
            return x[idx] + 0.1 * torch.randn(len(idx), 5, generator=noise), y[idx]

        def loss_of(batch):
            xb, yb = fetch(batch) if not prefetch else batch
            return F.cross_entropy(model(xb), yb)

        fit(model, loss_of, 64, None, lr=0.1, weight_decay=0.0, batch_size=16, steps=9,
            warmup_fraction=0.0, val_every=None, seed=3, device=torch.device("cpu"),
            fetch=fetch if prefetch else None)
        return model.weight.detach().clone(), seen, threads

    w_ahead, seen_ahead, threads = run(True)
    w_inline, seen_inline, _ = run(False)
    assert seen_ahead == seen_inline and len(seen_ahead) == 9
    assert torch.equal(w_ahead, w_inline)
    assert threads and all(t.startswith("cytotune-batch") for t in threads)
