"""
SLURM jobs on submitit: ``SubmititJob`` is the callable that ``tools/submit_slurm.py`` submits, one
task per process; each task exports torchrun's variables from submitit's job environment and runs
the training script's ``main`` through ``multimask.engine.launch.launch``. Its ``checkpoint()``
requeues the same command with ``--resume`` on preemption or timeout.
"""
import functools
import importlib.util
import os
import shutil
import sys
from typing import Any, Callable, List, Optional, Sequence

from detectron2.utils import comm

from .launch import config_device, launch

__all__ = [
    "SubmititJob",
    "checkpoint_dir_of_job",
    "copy_last_checkpoint",
    "export_job_environment",
    "import_training_script",
    "job_output_dir",
]



def job_output_dir(job_folder: str) -> str:
    """The training output (OUTPUT_DIR, train.output_dir) of the job in folder `job_folder`."""
    return os.path.join(job_folder, "output")


def checkpoint_dir_of_job(path: str) -> str:
    """
    The folder holding ``last_checkpoint`` of an earlier job: `path` itself, or its output folder
    when `path` is the job's folder. FileNotFoundError when neither has one.
    """
    for folder in (path, job_output_dir(path)):
        if os.path.isfile(os.path.join(folder, "last_checkpoint")):
            return os.path.abspath(folder)
    raise FileNotFoundError(
        f"--resume-job {path}: no last_checkpoint in {path} or {job_output_dir(path)}; give the "
        "folder of a job that has saved a checkpoint (or its output folder)"
    )


def _atomic_copy(src: str, dst: str) -> None:
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


def copy_last_checkpoint(src_dir: str, dst_dir: str) -> str:
    """
    Copy the checkpoint ``src_dir/last_checkpoint`` names into `dst_dir` and name it there, each
    file renamed into place (a job killed during the copy leaves no ``last_checkpoint``).

    Returns:
        The path of the copied checkpoint.
    """
    with open(os.path.join(src_dir, "last_checkpoint")) as f:
        name = f.read().strip()
    os.makedirs(dst_dir, exist_ok=True)
    _atomic_copy(os.path.join(src_dir, name), os.path.join(dst_dir, name))
    _atomic_copy(os.path.join(src_dir, "last_checkpoint"), os.path.join(dst_dir, "last_checkpoint"))
    return os.path.join(dst_dir, name)


def _resume_from_copy(main_func: Callable, src_dir: str, output_dir: str, args) -> Any:
    """main_func(args), after the main process copied `src_dir`'s last checkpoint (once per job)."""
    if comm.is_main_process() and not os.path.exists(os.path.join(output_dir, "last_checkpoint")):
        path = copy_last_checkpoint(src_dir, output_dir)
        print(f"[submitit job] resuming from {path} (copied from {src_dir})", flush=True)
    comm.synchronize()
    return main_func(args)


def _output_opts(config_file: str, output_dir: str) -> List[str]:
    if config_file.endswith(".py"):
        return [f"train.output_dir={output_dir}"]
    return ["OUTPUT_DIR", output_dir]


def import_training_script(path: str):
    """The training script at `path` (``train_net.py``) as a module; its folder joins sys.path."""
    path = os.path.realpath(path)
    name = os.path.splitext(os.path.basename(path))[0]
    loaded = sys.modules.get(name)
    if loaded is not None and os.path.realpath(getattr(loaded, "__file__", None) or "") == path:
        return loaded
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def export_job_environment(job_env):
    """
    Export torchrun's variables from a submitit job environment (``submitit.JobEnvironment()``),
    for ``launch`` to read: submitit's ``TorchDistributedEnvironment`` (MASTER_ADDR the job's first
    host, from SLURM_JOB_NODELIST; MASTER_PORT from the job id unless set; RANK, LOCAL_RANK,
    WORLD_SIZE, LOCAL_WORLD_SIZE from SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS) and GROUP_RANK,
    the machine rank, = SLURM_NODEID. Every GPU of the node stays visible (launch selects
    LOCAL_RANK's). Under submitit's local executor the rendezvous is 127.0.0.1.

    Returns:
        The ``TorchDistributedEnvironment``.
    """
    import submitit

    dist_env = submitit.helpers.TorchDistributedEnvironment()
    if job_env.cluster == "local":
        dist_env.master_addr = "127.0.0.1"  # one machine, whose host name may not resolve
    dist_env.export(set_cuda_visible_devices=False, overwrite=True)
    os.environ["GROUP_RANK"] = str(job_env.node)
    return dist_env


class SubmititJob:
    """
    A train_net command as a submitit job, one task per process: each task exports submitit's
    ``TorchDistributedEnvironment`` (rendezvous at the job's first host, ranks from the job
    environment; machine rank = the node id, SLURM_NODEID) and the machine rank as GROUP_RANK,
    then runs `target`'s ``main`` through ``launch``, with OUTPUT_DIR (``train.output_dir``) in the
    job's folder. On preemption or timeout submitit calls ``checkpoint()`` (task 0), which requeues
    the same command with ``--resume``: the job continues from its last checkpoint.
    """

    def __init__(self, target: str, argv: Sequence[str], resume_from: Optional[str] = None):
        """
        Args:
            target: a training script with ``get_parser()`` and ``main(args)`` (train_net.py).
            argv: its command line: flags, then the config options.
            resume_from: a folder with ``last_checkpoint`` (an earlier job's output): its last
                checkpoint is copied to this job's output before the first run (``--resume``
                must be in `argv`).
        """
        self.target = os.path.realpath(target)
        self.argv = list(argv)
        self.resume_from = resume_from

    def __call__(self) -> Any:
        import submitit

        job_env = submitit.JobEnvironment()
        dist_env = export_job_environment(job_env)
        output_dir = job_output_dir(str(job_env.paths.folder))
        module = import_training_script(self.target)
        args = module.get_parser().parse_args(self.argv)
        args.opts = list(args.opts) + _output_opts(args.config_file, output_dir)
        print(
            f"[submitit job] {job_env}: rendezvous {dist_env.master_addr}:{dist_env.master_port},"
            f" output {output_dir}, command {self.argv}",
            flush=True,
        )
        main = module.main
        if self.resume_from:
            main = functools.partial(_resume_from_copy, main, self.resume_from, output_dir)
        return launch(main, args=(args,), device=config_device(args.config_file, args.opts))

    def checkpoint(self, *args: Any, **kwargs: Any):
        """The submission that continues this job: the same command with ``--resume``."""
        import submitit

        argv = self.argv
        # --eval-only --resume would evaluate last_checkpoint instead of MODEL.WEIGHTS
        if "--resume" not in argv and "--eval-only" not in argv:
            argv = ["--resume"] + argv
        print(f"[submitit job] requeued: {argv}", flush=True)
        return submitit.helpers.DelayedSubmission(type(self)(self.target, argv, self.resume_from))

