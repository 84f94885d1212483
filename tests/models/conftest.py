"""Shared fixtures for the model-layer tests (offline, CPU, tiny random-init models)."""
from __future__ import annotations

import huggingface_hub  # noqa: F401  (imported before the fixture below switches the Hub off,
import pytest             # so its import-time offline flag reflects the real environment)
import torch

from cytotune.models import hub


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may wait on the network: the Hub is switched off (tests that need it set it up)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_unreachable_until", 0.0)
    torch.manual_seed(0)


@pytest.fixture
def pixels():
    """A fixed batch of two 32x32 normalised images."""
    g = torch.Generator().manual_seed(1234)
    return torch.randn(2, 3, 32, 32, generator=g)

