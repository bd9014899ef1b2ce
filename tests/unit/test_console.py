"""The main job's console: a step's output goes to the job log and one line to the console; Ray's
worker output goes to its file, the training epochs to the console too; Ray's loggers are routed;
Ctrl-C is taken back from a handler left behind."""

from __future__ import annotations

import io
import logging
import signal

import pytest

from rayrec.console import Console, interruptible


@pytest.fixture
def console(tmp_path):
    out = io.StringIO()
    c = Console(tmp_path / "logs", out=out)
    c.total = 2
    yield c, out
    c.close()


def test_a_step_prints_one_line_and_logs_the_rest(console):
    c, out = console

    def job() -> int:
        print("a wall of detail")
        return 0

    c.step("features", job, lambda: "10 ratings")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[1/2] features ") and lines[0].endswith("  10 ratings")
    assert "a wall of detail" in c.log_path.read_text() and "a wall of detail" not in out.getvalue()


def test_a_failing_step_shows_the_end_of_its_output(console):
    c, _ = console

    def job() -> int:
        print("error: no ratings.csv in /x")
        return 2

    with pytest.raises(SystemExit, match=r"(?s)features failed \(exit 2\).*no ratings.csv in /x.*full log"):
        c.step("features", job)


def test_worker_output_goes_to_its_file_and_epochs_to_the_console(console):
    c, out = console
    from rayrec.console import _Workers

    w = _Workers(c.workers_path, c.say)
    w({"pid": 7, "actor_name": "RayTrainWorker", "lines": [
        "Exception in thread PlacementGroupCleanerMonitor:",
        "[ranker] epoch 2/5 loss 0.6743 valid auc 0.6883 (best epoch 2) 4,498 samples/s (1.8s)",
    ]})  # fmt: skip
    w.file.close()
    assert out.getvalue().strip() == "ranker [█████·······] epoch 2/5 loss 0.6743 valid auc 0.6883 (best epoch 2) 4,498 samples/s (1.8s)"
    assert "PlacementGroupCleanerMonitor" in c.workers_path.read_text()


def test_epoch_lines_carry_a_progress_bar() -> None:
    from rayrec.console import progress_bar

    assert progress_bar("epoch 1/12 loss 0.9") == "[█···········] "
    assert progress_bar("epoch 12/12 loss 0.8") == "[████████████] "
    assert progress_bar("epoch 3/0 loss") == "" and progress_bar("loading") == ""


def test_ray_loggers_write_to_the_job_log(console):
    c, out = console
    ray_logger = logging.getLogger("ray.some_module_of_ray")
    ray_logger.propagate = False
    ray_logger.addHandler(logging.StreamHandler(out))  # as Ray configures its loggers: to the terminal
    c.capture_logging()
    ray_logger.warning("Token authentication is enabled for this Ray cluster")
    logging.getLogger("rayrec.x").warning("a warning of ours")
    assert "Token authentication" in c.log_path.read_text()
    assert "Token authentication" not in out.getvalue() and "a warning of ours" in out.getvalue()


def test_ctrl_c_is_taken_back_from_a_handler_left_behind():
    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda *_: None)  # as Ray Train leaves its own after a run
        interruptible()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_step_times_read_as_minutes_and_seconds_without_a_60th_second():
    from rayrec.console import _secs

    assert _secs(42.26) == "42.3s"
    assert _secs(135.2) == "2m15s"
    assert _secs(5939.7) == "99m00s"  # rounded before it is split, never "98m60s"
    assert _secs(3599.5) == "60m00s" and _secs(3601.0) == "60m01s"
