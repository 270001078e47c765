#!/usr/bin/env python
"""
Submit a train_net.py job to SLURM with submitit (``pip install multimask[slurm]``):

    python tools/submit_slurm.py --config-file configs/Amodal/multimask_R_50_FPN_1x_kins2020.yaml \\
        --nodes 2 --gpus-per-node 8 --partition learnfair --timeout 4320 SOLVER.IMS_PER_BATCH 32
    python tools/submit_slurm.py --config-file <cfg> --nodes 1 --gpus-per-node 8 --partition P \\
        --timeout 4320 --resume-job output/slurm/12345          # continue an earlier job
    python tools/submit_slurm.py --config-file <cfg> --gpus-per-node 2 --timeout 10 \\
        --cluster local MODEL.DEVICE cpu                        # try it out on this machine

The job has ``--gpus-per-node`` tasks on each node, one process per GPU (a CPU config, MODEL.DEVICE
cpu or train.device=cpu, asks for no GPU). Each task joins the ``env://`` rendezvous at the job's
first host with its rank from the job environment (machine rank = SLURM_NODEID), as under torchrun
(multimask.engine.slurm, multimask.engine.launch). The job's folder is ``--job-dir`` (``%j``: the job id); training writes
to ``<job folder>/output`` (OUTPUT_DIR / train.output_dir), submitit's logs to the folder itself.

SLURM sends USR2 ``--signal-delay`` seconds before the time limit, and on preemption: submitit
then calls the job's ``checkpoint()``, which requeues the same command with ``--resume``; the job
continues from the last checkpoint of its output (SOLVER.CHECKPOINT_PERIOD: the iterations after it
are trained again, with the same result). ``--resume-job DIR`` starts a new job from the last
checkpoint of an earlier one (its folder or its output folder), copied into the new output.

Every other argument is train_net.py's (``--resume``, ``--eval-only``, ``--trainer``, config
options); ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url`` and OUTPUT_DIR are
set by the job and refused here.
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from multimask.engine.launch import config_device  # noqa: E402
from multimask.engine.slurm import (  # noqa: E402
    SubmititJob,
    checkpoint_dir_of_job,
    import_training_script,
)

# set by the job: refused on the command line
SPAWN_FLAGS = ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url")
OUTPUT_KEYS = ("OUTPUT_DIR", "train.output_dir")


def get_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: train_net's --resume must not be read as an abbreviated --resume-job
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="Other arguments are passed to train_net.py (see its --help).",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML or .py config")
    parser.add_argument("--nodes", type=int, default=1, help="number of machines")
    parser.add_argument(
        "--gpus-per-node", type=int, default=1, help="GPUs per machine: one task (process) each"
    )
    parser.add_argument("--partition", default=None, help="SLURM partition (default: cluster's)")
    parser.add_argument(
        "--timeout", type=int, required=True, metavar="MIN", help="time limit of the job, minutes"
    )
    parser.add_argument(
        "--resume-job",
        default="",
        metavar="DIR",
        help="start from the last checkpoint of an earlier job (its folder or its output folder)",
    )
    parser.add_argument(
        "--job-dir",
        default="output/slurm/%j",
        help="folder of the job (%%j: the job id); training writes to its output/",
    )
    parser.add_argument("--name", default="", help="job name (default: the config's name)")
    parser.add_argument("--cpus-per-task", type=int, default=8, help="CPUs per task (data loading)")
    parser.add_argument(
        "--mem-gb", type=float, default=None, help="memory per node (default: the cluster's)"
    )
    parser.add_argument(
        "--max-timeouts", type=int, default=10, help="requeues after reaching the time limit"
    )
    parser.add_argument(
        "--signal-delay",
        type=int,
        default=120,
        metavar="S",
        help="seconds between SLURM's USR2 (requeue) and the time limit",
    )
    parser.add_argument(
        "--target",
        default=os.path.join(REPO_ROOT, "train_net.py"),
        help="training script with get_parser() and main(args), as train_net.py",
    )
    parser.add_argument(
        "--cluster",
        choices=["slurm", "local"],
        default="slurm",
        help="local: run the job on this machine with submitit's LocalExecutor (one node)",
    )
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, List[str]]:
    """
    The submission's arguments and train_net's command line (``--config-file``, flags, options).

    Raises:
        ValueError: arguments that the job sets, or values out of range.
    """
    args, rest = get_parser().parse_known_args(argv)
    for name in ("nodes", "gpus_per_node", "timeout", "cpus_per_task"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.cluster == "local" and args.nodes != 1:
        raise ValueError("--cluster local runs on one node: use --nodes 1")
    refused = [a for a in rest if a.split("=")[0] in SPAWN_FLAGS]
    if refused:
        raise ValueError(
            f"{', '.join(refused)}: the job starts the processes; use --nodes and --gpus-per-node"
        )
    train_argv = ["--config-file", os.path.abspath(args.config_file)]
    if args.resume_job and "--resume" not in rest:
        train_argv.append("--resume")
    return args, train_argv + rest


def executor_parameters(args: argparse.Namespace, device: str) -> dict:
    """``AutoExecutor.update_parameters`` of the job: one task per GPU (no GPU for a CPU config)."""
    params = dict(
        name=args.name or os.path.splitext(os.path.basename(args.config_file))[0],
        nodes=args.nodes,
        tasks_per_node=args.gpus_per_node,
        gpus_per_node=args.gpus_per_node if device.startswith("cuda") else 0,
        cpus_per_task=args.cpus_per_task,
        timeout_min=args.timeout,
        mem_gb=args.mem_gb,
        slurm_partition=args.partition,
        slurm_signal_delay_s=args.signal_delay,
    )
    return {k: v for k, v in params.items() if v is not None}


def submit(argv: Optional[Sequence[str]] = None):
    """Parse `argv` (default sys.argv), check train_net's command line, submit; the submitit Job."""
    import submitit  # optional dependency: pip install multimask[slurm]

    args, train_argv = parse_args(argv)
    target = os.path.abspath(args.target)
    train_args = import_training_script(target).get_parser().parse_args(train_argv)
    outputs = [o for o in train_args.opts if o.split("=")[0] in OUTPUT_KEYS]
    if outputs:
        raise ValueError(
            f"{outputs[0]}: the job trains in <job folder>/output; choose the folder with --job-dir"
        )
    resume_from = checkpoint_dir_of_job(args.resume_job) if args.resume_job else None
    device = config_device(train_args.config_file, train_args.opts)

    executor = submitit.AutoExecutor(
        folder=args.job_dir,
        cluster=args.cluster,
        slurm_max_num_timeout=args.max_timeouts,
        local_max_num_timeout=args.max_timeouts,
    )
    executor.update_parameters(**executor_parameters(args, device))
    job = executor.submit(SubmititJob(target, train_argv, resume_from=resume_from))
    print(f"Submitted job {job.job_id}: {job.paths.folder} (training output in its output/)")
    return job


if __name__ == "__main__":
    submit()
