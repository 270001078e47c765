#!/usr/bin/env python
"""
Train and evaluate multi-mask R-CNN models, with detectron2's command line:

    python train_net.py --config-file configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml
    python train_net.py --config-file <yaml> --eval-only MODEL.WEIGHTS <model.pth>
    python train_net.py --config-file <yaml> --resume        # continue OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file <yaml> --num-gpus 2 MODEL.DEVICE cpu   # 2 gloo processes
    python train_net.py --config-file <yaml> --trainer simple   # the loop of plain_train_loop
    torchrun --nproc_per_node 2 train_net.py --config-file <yaml>   # processes torchrun started
    python tools/submit_slurm.py --config-file <yaml> --nodes 2 --gpus-per-node 8 --partition P \
        --timeout 4320                                  # SLURM; requeued with --resume

A ``.py`` config is a detectron2 LazyConfig (see configs/common/), run by multimask.engine.lazy_train
with dotted overrides:

    python train_net.py --config-file configs/quick_schedules/multimask_R18_FPN_quick_synthetic.py \
        train.max_iter=100 model.roi_heads.mask_head.loss_weights=[1,0.5]
"""
import logging

from detectron2.engine import create_ddp_model, default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.modeling import build_model
from detectron2.utils import comm

from multimask.config import fall_back_to_cpu, get_multimask_cfg
from multimask.engine import (
    AtomicDetectionCheckpointer,
    MultiMaskTrainer,
    check_datasets,
    config_device,
    ddp_kwargs,
    do_test,
    do_train,
    launch,
)
from multimask.engine.lazy_train import lazy_main

logger = logging.getLogger("multimask")


def setup(args):
    # imports MULTIMASK.CUSTOM_IMPORTS (and runs their add_config) before merging the file
    cfg = get_multimask_cfg(args.config_file, args.opts)
    fall_back_to_cpu(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    if args.config_file.endswith(".py"):
        if args.trainer != "default":
            raise ValueError("--trainer applies to YAML configs; a .py config trains with lazy_train")
        return lazy_main(args)
    cfg = setup(args)
    if args.eval_only:
        check_datasets(cfg)
        model = build_model(cfg)
        # strict: evaluating weights that leave part of the model random gives a silently wrong AP
        checkpointer = AtomicDetectionCheckpointer(model, cfg.OUTPUT_DIR, strict_model=True)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = do_test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    if args.trainer == "simple":
        check_datasets(cfg)
        model = build_model(cfg)
        logger.info(f"Model:\n{model}")
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs(cfg))
        do_train(cfg, model, resume=args.resume)
        return do_test(cfg, model)

    trainer = MultiMaskTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # DefaultTrainer returns results only with TEST.EXPECTED_RESULTS; its EvalHook keeps the last ones.
    return getattr(trainer, "_last_eval_results", None)


def get_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--trainer",
        choices=["default", "simple"],
        default="default",
        help="default: DefaultTrainer with hooks; simple: the explicit loop in "
        "multimask/engine/plain_train_loop.py",
    )
    return parser


def launch_main(main_func, args):
    """
    Run ``main_func(args)`` in every process: those torchrun (or tools/submit_slurm.py) started, or
    ``--num-gpus`` spawned ones; the process group's backend follows the config's device.
    """
    return launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=config_device(args.config_file, args.opts),
    )


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    launch_main(main, args)
