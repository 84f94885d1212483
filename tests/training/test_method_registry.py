"""The torch-free method-name registry and the method functions stay in step."""
from __future__ import annotations

from cytotune.training import method_registry, methods


def test_the_name_registry_lists_the_registered_methods():
    assert method_registry.method_names() == list(methods.METHODS)
    assert methods.TRAINING_FREE is method_registry.TRAINING_FREE
    assert method_registry.TRAINING_FREE == {"zero-shot"}


def test_registering_a_method_declares_its_name():
    def run(ctx):  # never called
        raise AssertionError

    try:
        methods.register_method("custom-probe", run, trains=False)
        assert method_registry.is_known_method("custom-probe")
        assert method_registry.method_names()[-1] == "custom-probe"
        assert "custom-probe" in methods.TRAINING_FREE
        methods.register_method("custom-probe", run, replace=True)
        assert "custom-probe" not in methods.TRAINING_FREE
    finally:
        methods.METHODS.pop("custom-probe", None)
        method_registry._TRAINS.pop("custom-probe", None)
        method_registry.TRAINING_FREE.discard("custom-probe")
