"""
multimask.engine.launch: the process layout read from torchrun's variables, the checks of spawn
flags under a launcher, the backend and DDP device rule, the device read from a config, and two
processes started by torchrun joining one group with detectron2's local process group.
"""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from multimask.engine import config_device, distributed_env, launch
from multimask.engine.launch import ENV_VARS, ddp_device_ids, process_group_backend

from .common import REPO_ROOT
from .reliability_common import CONFIG

TORCHRUN_ENV = {
    "RANK": "3",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "node017",
    "MASTER_PORT": "29500",
}


def _set_env(monkeypatch, env):
    for k in ENV_VARS + ("GROUP_RANK",):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_distributed_env_reads_torchruns_variables():
    assert distributed_env({}) is None
    env = distributed_env(TORCHRUN_ENV)
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 4, 2)
    assert env.machine_rank == 1 and env.num_machines == 2
    # without GROUP_RANK the machine rank follows from the block layout
    no_group = {k: v for k, v in TORCHRUN_ENV.items() if k != "GROUP_RANK"}
    assert distributed_env(no_group) == env


@pytest.mark.parametrize(
    "change, message",
    [
        ({"MASTER_PORT": None}, "MASTER_PORT missing"),
        ({"LOCAL_WORLD_SIZE": None, "MASTER_ADDR": None}, "LOCAL_WORLD_SIZE, MASTER_ADDR missing"),
        ({"RANK": "three"}, "RANK='three' is not an integer"),
        ({"RANK": "4"}, "inconsistent process layout"),
        ({"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "0"}, "not a multiple of LOCAL_WORLD_SIZE"),
        # cyclic task distribution: rank 3 on machine 0
        ({"GROUP_RANK": "0"}, "need the ranks of a machine to be consecutive"),
    ],
)
def test_distributed_env_rejects_layouts_detectron2_cannot_run(change, message):
    env = {k: v for k, v in {**TORCHRUN_ENV, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        distributed_env(env)


def _never(*args):
    raise AssertionError("main_func ran")


def test_launch_under_torchrun_refuses_spawn_flags_that_disagree(monkeypatch):
    _set_env(monkeypatch, TORCHRUN_ENV)
    with pytest.raises(ValueError, match="--num-gpus 4 disagree"):
        launch(_never, 4, device="cpu")
    with pytest.raises(ValueError, match="--num-machines 3, --machine-rank 2 disagree"):
        launch(_never, 2, num_machines=3, machine_rank=2, device="cpu")
    assert not dist.is_initialized()


def test_launch_under_a_one_process_torchrun_runs_in_place(monkeypatch):
    _set_env(monkeypatch, {**TORCHRUN_ENV, "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"})
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    # --num-gpus equal to torchrun's --nproc_per_node is accepted and spawns nothing
    assert launch(lambda x: x + 1, 1, args=(41,), device="cpu") == 42
    assert not dist.is_initialized()


def test_backend_and_ddp_device_ids_follow_the_device(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_group_backend("cpu", 2) == "gloo"
    assert process_group_backend("cuda", 2) == "gloo"  # no CUDA: the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert process_group_backend("cpu", 2) == "gloo"
    assert process_group_backend("cuda", 2) == "nccl"
    with caplog.at_level(logging.WARNING, logger="multimask.engine.launch"):
        assert process_group_backend("cuda", 3) == "gloo"
    assert "3 processes per machine on 2 visible GPU(s)" in caplog.text
    assert ddp_device_ids("cpu") is None
    assert ddp_device_ids("cuda") == [1]  # the device launch selected
    assert ddp_device_ids("cuda:0") == [0]


def test_config_device_of_yaml_and_lazyconfig():
    assert config_device(CONFIG, ["MODEL.DEVICE", "cpu"]) == "cpu"
    cuda = "cuda" if torch.cuda.is_available() else "cpu"  # fall_back_to_cpu's rule
    assert config_device(CONFIG, ["MODEL.DEVICE", "cuda"]) == cuda
    quick_py = f"{REPO_ROOT}/configs/quick_schedules/multimask_R18_FPN_quick_synthetic.py"
    assert config_device(quick_py, ["train.device=cpu"]) == "cpu"
    assert config_device(quick_py, ["train.device=cuda"]) == cuda


WORKER = """
import json, sys
import torch.distributed as dist
from detectron2.utils import comm
from multimask.engine import launch

def main(out):
    info = dict(
        rank=comm.get_rank(), world=comm.get_world_size(), local_rank=comm.get_local_rank(),
        local_size=comm.get_local_size(), backend=str(dist.get_backend()),
        ranks=comm.all_gather(comm.get_rank()),
    )
    with open(f"{out}/{comm.get_rank()}.json", "w") as f:
        json.dump(info, f)

launch(main, args=(sys.argv[1],), device="cpu")
"""


def test_processes_started_by_torchrun_join_one_group(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        cmd + [str(script), str(tmp_path)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    infos = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    for rank, info in enumerate(infos):
        assert info == dict(
            rank=rank, world=2, local_rank=rank, local_size=2, backend="gloo", ranks=[0, 1]
        )
