"""train.log gets a run's INFO lines however logging is configured, and nothing else changes:
the user's handlers see what they saw before, and the logger is restored afterwards."""
from __future__ import annotations

import logging

import pytest

import cytotune
from cytotune.training.run_log import close_run_log, open_run_log


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.NOTSET)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def quiet_logger():
    """A logger left as a notebook leaves it: NOTSET under a WARNING root with a handler."""
    logger = logging.getLogger("cytotune_test_runlog")
    child = logging.getLogger("cytotune_test_runlog.training.loop")
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.WARNING)
    shown = _Collect()
    root.addHandler(shown)
    yield logger, child, shown
    root.removeHandler(shown)
    root.setLevel(before)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def test_info_lines_reach_the_run_log_but_not_the_users_handlers(quiet_logger, tmp_path):
    logger, child, shown = quiet_logger
    child.info("before the run")
    handler = open_run_log(tmp_path / "train.log", logger)
    child.info("step 1/2 val acc 0.5")
    child.warning("careful")
    assert close_run_log(handler, logger) is None
    child.info("after the run")
    child.warning("later")

    text = (tmp_path / "train.log").read_text()
    assert "INFO cytotune_test_runlog.training.loop: step 1/2 val acc 0.5" in text
    assert "WARNING cytotune_test_runlog.training.loop: careful" in text
    assert "before the run" not in text and "after the run" not in text
    assert shown.messages == ["careful", "later"]  # as without a run log: warnings only
    assert logger.level == logging.NOTSET and logger.propagate and logger.handlers == []


def test_the_loggers_own_handlers_keep_their_threshold_and_nested_logs_restore_once(
        quiet_logger, tmp_path):
    logger, child, shown = quiet_logger
    logger.setLevel(logging.ERROR)
    own = _Collect()
    logger.addHandler(own)
    try:
        first = open_run_log(tmp_path / "a.log", logger)
        second = open_run_log(tmp_path / "b.log", logger)
        child.info("both")
        close_run_log(first, logger)
        child.info("second only")
        child.warning("below the user's ERROR")
        child.error("broken")
        close_run_log(second, logger)
        child.info("none")
    finally:
        logger.removeHandler(own)
    assert "both" in (tmp_path / "a.log").read_text()
    assert "second only" not in (tmp_path / "a.log").read_text()
    b = (tmp_path / "b.log").read_text()
    assert "both" in b and "second only" in b and "below the user's ERROR" in b and "none" not in b
    assert own.messages == ["broken"] and shown.messages == ["broken"]
    assert logger.level == logging.ERROR and logger.propagate
    assert own.filters == []


def test_a_logger_already_at_info_is_left_alone(quiet_logger, tmp_path):
    logger, child, shown = quiet_logger
    logger.setLevel(logging.INFO)  # as the CLI sets it
    handler = open_run_log(tmp_path / "train.log", logger)
    assert logger.propagate and logger.handlers == [handler]
    child.info("shown as before")
    close_run_log(handler, logger)
    assert shown.messages == ["shown as before"]
    assert logger.level == logging.INFO and logger.handlers == []


def test_a_run_from_python_logs_its_steps_without_logging_set_up(synthetic_data, tiny_model_names,
                                                                 tmp_path):
    logger = logging.getLogger("cytotune")
    before = logger.level
    logger.setLevel(logging.NOTSET)  # a notebook: the root's WARNING applies
    try:
        out = tmp_path / "run"
        cytotune.train(data=str(synthetic_data), model=tiny_model_names["uni"], method="linear",
                       shots=2, seed=1, lr=1e-2, out=str(out), linear_epochs=4, batch_size=8,
                       pretrained=False, num_workers=0, cache_dir=str(tmp_path / "cache"))
        assert logger.level == logging.NOTSET and logger.propagate
    finally:
        logger.setLevel(before)
    text = (out / "train.log").read_text()
    assert " INFO " in text and "test accuracy" in text, text
