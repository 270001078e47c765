"""
Interrupted training: train_net.py killed (SIGKILL) between checkpoints and in the middle of a
checkpoint save, then ``--resume``: it continues from the last complete checkpoint and reproduces
the uninterrupted run exactly (losses and LR of every iteration, final weights and optimizer state).
"""

import os
import signal
import subprocess
import time

import pytest
import torch

from detectron2.data import DatasetCatalog

import train_net

from multimask.engine import MultiMaskTrainer

from .reliability_common import (
    CONFIG,
    TINY_OPTS,
    TRAIN,
    VAL,
    LossRecorder,
    driver_command,
    driver_env,
    one_thread,
    read_losses,
    register_tiny_splits,
)

MAX_ITER = 6
# warm-up then a step: the LR differs at every iteration, so a wrongly restored scheduler shows
SCHEDULE = ["SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", "1"]
SCHEDULE += ["SOLVER.WARMUP_ITERS", "3", "SOLVER.WARMUP_FACTOR", "0.2", "SOLVER.STEPS", "(4,)"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rel_data"))
    register_tiny_splits(root)
    DatasetCatalog.get(TRAIN), DatasetCatalog.get(VAL)  # generate once, before the subprocesses
    return root


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _last_checkpoint(out):
    with open(os.path.join(out, "last_checkpoint")) as f:
        return os.path.join(out, f.read().strip())


def _run_until(cmd, env, done, timeout=180.0):
    """Start `cmd`, SIGKILL it as soon as `done()` is true; returns the return code."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and not done():
            assert time.time() < deadline, "the run never reached the kill point"
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


def _assert_same_state(a, b):
    assert a["iteration"] == b["iteration"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    opt_a = a["trainer"]["_trainer"]["optimizer"]["state"]
    opt_b = b["trainer"]["_trainer"]["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys() and len(opt_a) > 0
    for k in opt_a:
        assert torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"]), k
    assert a["trainer"]["hooks"]["LRScheduler"] == b["trainer"]["hooks"]["LRScheduler"]


def _train_in_process(monkeypatch, log, *flags_and_opts):
    """What the driver runs, in this process (saves a ~15 s interpreter start on busy CPUs)."""
    build_hooks = MultiMaskTrainer.build_hooks
    monkeypatch.setattr(
        MultiMaskTrainer, "build_hooks", lambda self: build_hooks(self) + [LossRecorder(log)]
    )
    cmd = driver_command(*flags_and_opts)
    return train_net.main(train_net.get_parser().parse_args(cmd[2:]))


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(data_root, tmp_path, monkeypatch):
    ref, out = str(tmp_path / "ref"), str(tmp_path / "run")
    ref_log, log = os.path.join(ref, "losses.jsonl"), os.path.join(out, "losses.jsonl")
    _train_in_process(monkeypatch, ref_log, "--", *SCHEDULE, "OUTPUT_DIR", ref)

    # 1. killed while model_0000002.pth is being written (saves slowed to ~1 s)
    tmp_file = os.path.join(out, "model_0000002.pth.tmp")
    cmd = driver_command("--", *SCHEDULE, "OUTPUT_DIR", out)
    env = driver_env(data_root, MULTIMASK_TEST_LOSS_LOG=log, MULTIMASK_TEST_SLOW_SAVE="0.05")
    assert _run_until(cmd, env, lambda: os.path.exists(tmp_file)) == -signal.SIGKILL
    assert _last_checkpoint(out).endswith("model_0000001.pth")
    assert not os.path.exists(os.path.join(out, "model_0000002.pth"))
    assert os.path.getsize(tmp_file) < os.path.getsize(os.path.join(ref, "model_0000002.pth"))
    assert _load(_last_checkpoint(out))["iteration"] == 1  # complete and readable

    # 2. resumed, then killed between steps once last_checkpoint names model_0000003.pth (steps
    # start 0.5 s late, so the kill lands before step 4 even when this process is slow to poll)
    resume = driver_command("--resume", "--", *SCHEDULE, "OUTPUT_DIR", out)
    env = driver_env(data_root, MULTIMASK_TEST_LOSS_LOG=log, MULTIMASK_TEST_SLOW_STEP="0.5")
    done = lambda: _last_checkpoint(out).endswith("model_0000003.pth")  # noqa: E731
    assert _run_until(resume, env, done) == -signal.SIGKILL
    killed_at = _load(_last_checkpoint(out))["iteration"]
    assert killed_at == 3
    assert sorted(read_losses(log)) == list(range(killed_at + 1))

    # 3. resumed to the end
    _train_in_process(monkeypatch, log, "--resume", "--", *SCHEDULE, "OUTPUT_DIR", out)
    assert f"Starting training from iteration {killed_at + 1}" in open(f"{out}/log.txt").read()
    assert _last_checkpoint(out).endswith("model_final.pth")

    want, got = read_losses(ref_log), read_losses(log)
    assert sorted(got) == sorted(want) == list(range(MAX_ITER))
    assert len({round(r["lr"], 8) for r in want.values()}) >= 4  # the schedule really varies
    for it in range(MAX_ITER):
        assert got[it] == want[it], f"iteration {it}: {got[it]} != {want[it]}"
    final = [_load(os.path.join(d, "model_final.pth")) for d in (out, ref)]
    _assert_same_state(*final)


def test_simple_trainer_resume_continues_the_same_run(data_root, tmp_path):
    out = tmp_path / "simple"
    opts = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(out)]

    def run(resume):
        argv = ["--config-file", CONFIG, "--trainer", "simple"] + (["--resume"] if resume else [])
        train_net.main(train_net.get_parser().parse_args(argv + TINY_OPTS + opts))

    run(resume=False)
    reference = _load(out / "model_final.pth")
    # as if killed during iteration 2: model_0000001 is the last complete checkpoint
    os.remove(out / "model_final.pth")
    os.remove(out / "model_0000003.pth")
    (out / "last_checkpoint").write_text("model_0000001.pth")
    run(resume=True)
    resumed = _load(out / "model_final.pth")
    assert resumed["iteration"] == reference["iteration"] == 3
    for k in reference["model"]:
        assert torch.equal(resumed["model"][k], reference["model"][k]), k
    for k, v in reference["optimizer"]["state"].items():
        assert torch.equal(
            resumed["optimizer"]["state"][k]["momentum_buffer"], v["momentum_buffer"]
        )
    assert resumed["scheduler"] == reference["scheduler"]
