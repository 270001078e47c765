"""
Starting the processes of a job, one place for every launcher:

- **from the environment**: under ``torchrun`` (or a SLURM job of ``tools/submit_slurm.py``, which
  exports the same variables from submitit's job environment) every process already runs; it reads
  RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (and GROUP_RANK, the
  machine rank) and joins an ``env://`` rendezvous, spawning nothing;
- **spawn**: otherwise ``--num-gpus N`` processes per machine are spawned, as detectron2's
  ``launch`` does.

Either way a process selects its GPU (LOCAL_RANK modulo the visible devices), joins the process
group with the backend of its device (gloo on the CPU and where processes share a GPU, which NCCL
refuses; NCCL otherwise; detectron2's ``launch`` takes NCCL whenever CUDA exists, even for
``MODEL.DEVICE cpu``), and creates detectron2's local process group (``comm.get_local_rank()``)
before ``main_func`` runs.

SLURM jobs (``tools/submit_slurm.py``) run ``multimask.engine.slurm.SubmititJob``, which exports the
job's variables and calls ``launch``.
"""
import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

from ..config import fall_back_to_cpu, get_multimask_cfg

__all__ = [
    "DistributedEnv",
    "config_device",
    "ddp_device_ids",
    "distributed_env",
    "launch",
    "process_group_backend",
]

logger = logging.getLogger(__name__)

# torchrun's contract (torch.distributed.run); GROUP_RANK is optional
ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedEnv:
    """The process layout a launcher exported: this process' ranks and the job's sizes."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    machine_rank: int

    @property
    def num_machines(self) -> int:
        return self.world_size // self.local_world_size


def _int_var(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={environ[name]!r} is not an integer")


def distributed_env(environ: Optional[Mapping[str, str]] = None) -> Optional[DistributedEnv]:
    """
    The layout that torchrun (or submit_slurm's job) exported, or None when this process was not
    started by such a launcher (no RANK, LOCAL_RANK or WORLD_SIZE).

    Args:
        environ: the environment to read (default ``os.environ``).

    Raises:
        ValueError: some of the variables are set and others missing, or they describe a layout
            detectron2 cannot run: its local process groups need the same number of processes on
            every machine and the ranks of a machine consecutive (rank = machine rank x
            LOCAL_WORLD_SIZE + LOCAL_RANK, torchrun's and SLURM's default block layout).
    """
    environ = os.environ if environ is None else environ
    present = [k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if k in environ]
    if not present:
        return None
    missing = [k for k in ENV_VARS if k not in environ]
    if missing:
        raise ValueError(
            f"{', '.join(present)} set but {', '.join(missing)} missing: start the processes with "
            "torchrun (or tools/submit_slurm.py), which sets all of " + ", ".join(ENV_VARS)
        )
    rank, local_rank, world_size, local_world_size = (
        _int_var(environ, k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    )
    if not (0 <= rank < world_size and 0 <= local_rank < local_world_size <= world_size):
        raise ValueError(
            f"inconsistent process layout: RANK={rank} WORLD_SIZE={world_size} "
            f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world_size}"
        )
    if world_size % local_world_size:
        raise ValueError(
            f"WORLD_SIZE={world_size} is not a multiple of LOCAL_WORLD_SIZE={local_world_size}: "
            "detectron2 needs the same number of processes on every machine"
        )
    machine_rank = (
        _int_var(environ, "GROUP_RANK") if "GROUP_RANK" in environ else rank // local_world_size
    )
    if rank != machine_rank * local_world_size + local_rank:
        raise ValueError(
            f"RANK={rank} is not GROUP_RANK x LOCAL_WORLD_SIZE + LOCAL_RANK = {machine_rank} x "
            f"{local_world_size} + {local_rank}: detectron2's local process groups need the ranks "
            "of a machine to be consecutive (SLURM: use the default block task distribution)"
        )
    return DistributedEnv(rank, local_rank, world_size, local_world_size, machine_rank)


def config_device(config_file: str, opts: Sequence[str] = ()) -> str:
    """
    The device a train_net config trains on, read before any process starts (the backend depends
    on it): a YAML's ``MODEL.DEVICE`` ("cpu" when it names CUDA and CUDA is not available, as
    ``fall_back_to_cpu`` makes it), or a LazyConfig's (``.py``) ``train.device``.
    """
    if config_file.endswith(".py"):
        from detectron2.config import LazyConfig

        cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))
        device = str(cfg.train.get("device", "cuda"))
        return device if torch.cuda.is_available() or not device.startswith("cuda") else "cpu"
    cfg = get_multimask_cfg(config_file, opts)
    fall_back_to_cpu(cfg)
    return cfg.MODEL.DEVICE


def _uses_cuda(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_available()


def process_group_backend(device: str, local_world_size: int) -> str:
    """
    "nccl" for processes on GPUs, one per GPU; "gloo" on the CPU, and (with a warning) when
    there are more processes per machine than visible GPUs: NCCL refuses two ranks on one device.
    """
    if not _uses_cuda(device):
        return "gloo"
    if local_world_size > torch.cuda.device_count():
        logger.warning(
            f"{local_world_size} processes per machine on {torch.cuda.device_count()} visible "
            "GPU(s): they share GPUs, which NCCL refuses; using gloo (slower)"
        )
        return "gloo"
    return "nccl"


def ddp_device_ids(device: str) -> Optional[List[int]]:
    """
    DistributedDataParallel's ``device_ids`` for a model on `device`: None on the CPU (DDP rejects
    device ids for a CPU module), else the GPU this process selected. detectron2 passes
    ``[local_rank]``, which names no device where processes share a GPU or each sees only its own.
    """
    if not device.startswith("cuda"):
        return None
    index = torch.device(device).index
    return [torch.cuda.current_device() if index is None else index]


def _run_in_group(
    main_func: Callable,
    args: Sequence[Any],
    device: str,
    init_method: str,
    rank: int,
    local_rank: int,
    world_size: int,
    local_world_size: int,
    timeout: timedelta,
) -> Any:
    if _uses_cuda(device):
        # LOCAL_RANK modulo: a process may see all of the machine's GPUs, or only its own
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if world_size == 1:
        return main_func(*args)
    backend = process_group_backend(device, local_world_size)
    try:
        dist.init_process_group(
            backend=backend,
            init_method=init_method,
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
    except Exception:
        logger.error(f"Process group rendezvous {init_method} (backend {backend}) failed")
        raise
    try:
        comm.create_local_process_group(local_world_size)
        # a barrier before the first collective, as detectron2's launch (maskrcnn-benchmark #172)
        comm.synchronize()
        result = main_func(*args)
        # every worker is done before any tears down: rank 0 holds the rendezvous store, and a
        # gloo group whose peer has gone may abort its process at exit ("terminate called
        # without an active exception"). Not after an exception: a barrier would then hang.
        comm.synchronize()
        return result
    finally:
        dist.destroy_process_group()
        comm._LOCAL_PROCESS_GROUP = None  # its group is gone; a later launch creates a new one


def _spawned_worker(
    local_rank, main_func, args, device, dist_url, machine_rank, nprocs, world_size, timeout
):
    rank = machine_rank * nprocs + local_rank
    _run_in_group(main_func, args, device, dist_url, rank, local_rank, world_size, nprocs, timeout)


def _check_spawn_args(env: DistributedEnv, num_gpus: int, num_machines: int, machine_rank: int):
    """Under a launcher, --num-gpus / --num-machines / --machine-rank are its numbers or unset."""
    given = {
        "--num-gpus": (num_gpus, 1, env.local_world_size),
        "--num-machines": (num_machines, 1, env.num_machines),
        "--machine-rank": (machine_rank, 0, env.machine_rank),
    }
    wrong = [f"{k} {v}" for k, (v, unset, ok) in given.items() if v not in (unset, ok)]
    if wrong:
        raise ValueError(
            f"started by torchrun/SLURM (WORLD_SIZE={env.world_size}, LOCAL_WORLD_SIZE="
            f"{env.local_world_size}, machine rank {env.machine_rank}), which starts the "
            f"processes: {', '.join(wrong)} disagree(s) with it; drop these flags (torchrun's "
            "--nproc_per_node and --nnodes set the number of processes)"
        )


def launch(
    main_func: Callable,
    num_gpus_per_machine: int = 1,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    device: Optional[str] = None,
) -> Any:
    """
    Run ``main_func(*args)`` in every process of the job: from the environment under torchrun or
    submit_slurm (``distributed_env()`` is not None; `dist_url` is not used: the rendezvous is
    ``env://``), else in ``num_gpus_per_machine`` spawned processes per machine (detectron2's
    ``launch`` arguments and behaviour, `dist_url` "auto" for a free local port).

    Args:
        main_func: the function each process runs; spawned, it must be picklable.
        num_gpus_per_machine, num_machines, machine_rank, dist_url, timeout: as detectron2's
            ``launch``. Under a launcher they must be unset (1, 1, 0) or equal its numbers.
        args: the arguments of `main_func`.
        device: the device the job trains on (``config_device``); it chooses the backend. None:
            "cuda" if CUDA is available, else "cpu".

    Returns:
        What `main_func` returned in this process; None after spawning.

    Raises:
        ValueError: an inconsistent environment, or spawn flags that disagree with the launcher.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    env = distributed_env()
    if env is not None:
        _check_spawn_args(env, num_gpus_per_machine, num_machines, machine_rank)
        return _run_in_group(
            main_func, args, device, "env://", env.rank, env.local_rank, env.world_size,
            env.local_world_size, timeout,
        )  # fmt: skip
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return _run_in_group(main_func, args, device, "", 0, 0, 1, 1, timeout)
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto (a free local port) needs --num-machines 1")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            dist_url = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    worker_args = (main_func, tuple(args), device, dist_url, machine_rank, num_gpus_per_machine)
    mp.start_processes(
        _spawned_worker,
        nprocs=num_gpus_per_machine,
        args=worker_args + (world_size, timeout),
        daemon=False,
    )
    return None
