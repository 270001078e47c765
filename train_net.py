#!/usr/bin/env python
"""
Train and evaluate multi-mask R-CNN models, with detectron2's command line:

    python train_net.py --config-file configs/quick_schedules/multimask_R18_FPN_quick_synthetic.yaml
    python train_net.py --config-file <yaml> --eval-only MODEL.WEIGHTS <model.pth>
    python train_net.py --config-file <yaml> --resume                 # continue OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file <yaml> --num-gpus 2 MODEL.DEVICE cpu   # 2 gloo processes on CPU
    python train_net.py --config-file <yaml> --trainer simple        # the explicit loop of plain_train_loop
"""
import logging

from detectron2.config import get_cfg
from detectron2.engine import create_ddp_model, default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.modeling import build_model
from detectron2.utils import comm

from multimask import add_multimask_config
from multimask.engine import (
    AtomicDetectionCheckpointer,
    MultiMaskTrainer,
    check_datasets,
    ddp_kwargs,
    do_test,
    do_train,
)

logger = logging.getLogger("multimask")


def setup(args):
    cfg = get_cfg()
    add_multimask_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        check_datasets(cfg)
        model = build_model(cfg)
        AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
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
    return trainer.train()


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


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
