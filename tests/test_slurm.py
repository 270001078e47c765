"""
tools/submit_slurm.py and multimask.engine.SubmititJob: torchrun's variables from a SLURM job
environment, the submission's arguments, and jobs run by submitit's local executor on the CPU: a
2-task job trains (one group, one log writer, output in the job's folder); a job that receives
USR2 (SLURM's preemption / time-limit signal) mid-training is requeued with ``--resume`` by its
``checkpoint()`` and ends with the weights and optimizer state of the uninterrupted job, bit for
bit.
"""
import importlib.util
import os
import signal
import time

import pytest
import submitit
import torch

from detectron2.data import DatasetCatalog

from multimask.engine import SubmititJob, distributed_env
from multimask.engine.launch import ENV_VARS
from multimask.engine.slurm import (
    _resume_from_copy,
    checkpoint_dir_of_job,
    copy_last_checkpoint,
    export_job_environment,
)

from .common import REPO_ROOT
from .reliability_common import CONFIG, DRIVER, TINY_OPTS, TRAIN, VAL, register_tiny_splits

_spec = importlib.util.spec_from_file_location(
    "submit_slurm", os.path.join(REPO_ROOT, "tools", "submit_slurm.py")
)
submit_slurm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(submit_slurm)

# as tests/test_interrupted_training.py: the LR differs at every iteration, a checkpoint each
SCHEDULE = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.IMS_PER_BATCH", "4"]
SCHEDULE += ["SOLVER.WARMUP_ITERS", "3", "SOLVER.WARMUP_FACTOR", "0.2", "SOLVER.STEPS", "(4,)"]
SLURM_ENV = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "8",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_NODELIST": "gpu[017-018]",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
}


def test_torchrun_variables_from_a_slurm_job(monkeypatch):
    for k in ENV_VARS + ("GROUP_RANK",):
        monkeypatch.setenv(k, "stale")  # restored afterwards; the job's values replace them
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    for k, v in SLURM_ENV.items():
        monkeypatch.setenv(k, v)
    job_env = submitit.JobEnvironment()
    assert job_env.cluster == "slurm"
    export_job_environment(job_env)
    assert os.environ["MASTER_ADDR"] == "gpu017"  # the job's first host
    assert 20000 <= int(os.environ["MASTER_PORT"]) <= 60000  # from the job id: the same on all
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    env = distributed_env()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (5, 1, 8, 4)
    assert env.machine_rank == 1  # SLURM_NODEID


def test_submission_arguments():
    base = ["--config-file", CONFIG, "--timeout", "60"]
    cluster = ["--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu"]
    args, argv = submit_slurm.parse_args(base + cluster + ["--resume", "SEED", "3"])
    # train_net's --resume is not taken for an abbreviation of --resume-job
    assert args.resume_job == "" and argv == ["--config-file", CONFIG, "--resume", "SEED", "3"]
    assert submit_slurm.executor_parameters(args, "cuda") == dict(
        name="multimask_R18_FPN_instant_test_synthetic", nodes=2, tasks_per_node=8,
        gpus_per_node=8, cpus_per_task=8, timeout_min=60, slurm_partition="gpu",
        slurm_signal_delay_s=120,
    )  # fmt: skip
    assert submit_slurm.executor_parameters(args, "cpu")["gpus_per_node"] == 0
    with pytest.raises(ValueError, match="--num-gpus: the job starts the processes"):
        submit_slurm.parse_args(base + ["--num-gpus", "2"])
    with pytest.raises(ValueError, match="--nodes must be at least 1"):
        submit_slurm.parse_args(base + ["--nodes", "0"])
    with pytest.raises(ValueError, match="one node"):
        submit_slurm.parse_args(base + ["--nodes", "2", "--cluster", "local"])
    with pytest.raises(ValueError, match="OUTPUT_DIR: the job trains in <job folder>/output"):
        submit_slurm.submit(base + ["--cluster", "local", "OUTPUT_DIR", "/tmp/x"])


def test_checkpoint_requeues_the_same_command_with_resume():
    argv = ["--config-file", CONFIG, "SEED", "3"]
    job = SubmititJob(DRIVER, argv)
    requeued = job.checkpoint()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert requeued.function.argv == ["--resume"] + argv
    assert requeued.function.target == os.path.realpath(DRIVER)
    assert requeued.function.checkpoint().function.argv == ["--resume"] + argv  # once
    # --eval-only --resume would evaluate last_checkpoint instead of MODEL.WEIGHTS
    evaluation = ["--eval-only"] + argv
    assert SubmititJob(DRIVER, evaluation).checkpoint().function.argv == evaluation


def test_resume_job_copies_the_last_checkpoint_once(tmp_path):
    old, new = tmp_path / "old_job", tmp_path / "new_job" / "output"
    (old / "output").mkdir(parents=True)
    (old / "output" / "model_0000009.pth").write_bytes(b"weights")
    (old / "output" / "last_checkpoint").write_text("model_0000009.pth")
    assert checkpoint_dir_of_job(str(old)) == str(old / "output")  # the job's folder
    assert checkpoint_dir_of_job(str(old / "output")) == str(old / "output")  # or its output
    with pytest.raises(FileNotFoundError, match="no last_checkpoint"):
        checkpoint_dir_of_job(str(tmp_path))

    assert _resume_from_copy(lambda a: a, str(old / "output"), str(new), "ran") == "ran"
    assert (new / "model_0000009.pth").read_bytes() == b"weights"
    assert (new / "last_checkpoint").read_text() == "model_0000009.pth"
    # requeued later: the job's own newer checkpoint stays
    (new / "last_checkpoint").write_text("model_0000019.pth")
    _resume_from_copy(lambda a: a, str(old / "output"), str(new), None)
    assert (new / "last_checkpoint").read_text() == "model_0000019.pth"
    assert sorted(os.listdir(new)) == ["last_checkpoint", "model_0000009.pth"]
    assert copy_last_checkpoint(str(old / "output"), str(tmp_path / "c")).endswith("0009.pth")


# ---------------------------------------------------------------------------------------------
# jobs on submitit's local executor


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("slurm_data"))
    register_tiny_splits(root)
    DatasetCatalog.get(TRAIN), DatasetCatalog.get(VAL)  # generate once, before the jobs
    return root


def _submit(data_root, job_dir, **env):
    """A 2-task local job of the test driver (tiny CPU config, SCHEDULE); tasks inherit `env`."""
    env = dict(MULTIMASK_TEST_DATA=data_root, OMP_NUM_THREADS="1", **env)
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")])
    argv = ["--config-file", CONFIG, "--gpus-per-node", "2", "--timeout", "10"]
    argv += ["--cluster", "local", "--job-dir", f"{job_dir}/%j", "--target", DRIVER]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        return submit_slurm.submit(argv + TINY_OPTS + SCHEDULE)


def _wait(job, timeout=240.0):
    """The results of every task; the job is cancelled if it runs past `timeout`."""
    deadline = time.time() + timeout
    while not job.done():
        if time.time() > deadline:
            job.cancel()
            raise AssertionError(f"job {job.job_id} still running after {timeout} s")
        time.sleep(0.1)
    return job.results()


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    job = _submit(data_root, tmp_path_factory.mktemp("uninterrupted"))
    return job, _wait(job)


def test_two_task_job_trains(uninterrupted):
    job, results = uninterrupted
    assert len(results) == 2 and "segm_amodal" in results[0]
    out = job.paths.folder / "output"  # per job: <--job-dir with the job id>/output
    assert (out / "model_final.pth").is_file()
    assert "Rank of current process: 0. World size: 2" in (out / "log.txt").read_text()
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()
    stdout = job.stdout()
    assert "rendezvous 127.0.0.1:" in stdout and "global_rank=0(2)" in stdout


def _tasks_of(controller_pid):
    """The task processes that submitit's local controller started (its children)."""
    tasks = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == controller_pid:
            tasks.append(int(pid))
    return tasks


def test_interrupted_job_is_requeued_and_matches_the_uninterrupted_one(
    data_root, tmp_path, uninterrupted
):
    # steps start 0.5 s late, so the signal lands before the end of training
    job = _submit(data_root, tmp_path, MULTIMASK_TEST_SLOW_STEP="0.5")
    last = job.paths.folder / "output" / "last_checkpoint"
    deadline = time.time() + 180
    try:
        while not (last.is_file() and last.read_text().strip() == "model_0000001.pth"):
            assert not job.done(), f"the job ended before its checkpoint:\n{job.stderr()}"
            assert time.time() < deadline, "the job never saved model_0000001.pth"
            time.sleep(0.005)
        tasks = _tasks_of(job._process.pid)
        assert len(tasks) == 2
        for pid in tasks:  # as SLURM signals every task of a job it preempts or times out
            os.kill(pid, signal.SIGUSR2)
    except BaseException:
        job.cancel()
        raise
    results = _wait(job)
    assert "segm_amodal" in results[0]

    out = job.paths.folder / "output"
    stdout = job.stdout()
    assert "Requeued job" in stdout and "[submitit job] requeued: ['--resume', " in stdout
    log = (out / "log.txt").read_text()
    starts = [int(ln.split()[-1]) for ln in log.splitlines() if "Starting training from" in ln]
    assert starts[0] == 0 and len(starts) == 2 and 2 <= starts[1] < 6  # resumed after model_0000001

    want = _load(uninterrupted[0].paths.folder / "output" / "model_final.pth")
    got = _load(out / "model_final.pth")
    assert got["iteration"] == want["iteration"] == 5
    assert got["model"].keys() == want["model"].keys()
    for k in want["model"]:
        assert torch.equal(got["model"][k], want["model"][k]), k
    opt_got = got["trainer"]["_trainer"]["optimizer"]["state"]
    opt_want = want["trainer"]["_trainer"]["optimizer"]["state"]
    assert opt_got.keys() == opt_want.keys() and len(opt_want) > 0
    for k in opt_want:
        assert torch.equal(opt_got[k]["momentum_buffer"], opt_want[k]["momentum_buffer"]), k
    assert got["trainer"]["hooks"]["LRScheduler"] == want["trainer"]["hooks"]["LRScheduler"]
