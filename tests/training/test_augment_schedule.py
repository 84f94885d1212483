import torch

from cytotune.training.augment import normalise, random_dihedral
from cytotune.training.schedule import warmup_cosine


def test_dihedral_keeps_every_pixel_and_is_seeded():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a = random_dihedral(x, torch.Generator().manual_seed(3))
    b = random_dihedral(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    for i in range(16):
        assert torch.equal(a[i].flatten().sort().values, x[i].flatten().sort().values)
    assert not torch.equal(a, x)


def test_normalise():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = normalise(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert torch.allclose(y, torch.ones_like(y))


def test_warmup_then_cosine_to_zero():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[1] < lrs[2] == 1.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[-1] < 0.05
