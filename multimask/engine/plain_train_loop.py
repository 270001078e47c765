"""
An explicit training loop (``train_net.py --trainer simple``) for users who want to change the step:
every part (data, forward, loss reduction, optimizer, scheduler, checkpoints, writers, evaluation) is
a visible line here instead of a hook of DefaultTrainer.
"""
import logging
from collections import OrderedDict

import torch

from detectron2.engine import default_writers
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from fvcore.common.checkpoint import PeriodicCheckpointer

from .checkpoint import AtomicDetectionCheckpointer
from .hooks import build_validation_loss_hook
from .resume import (
    capture_resume_state,
    checkpoint_due,
    preserve_rng_states,
    restore_resume_state,
)
from .trainer import MultiMaskTrainer, amp_enabled

__all__ = ["do_train", "do_test"]

logger = logging.getLogger(__name__)


def do_test(cfg, model) -> OrderedDict:
    """Evaluate `model` on every dataset of ``cfg.DATASETS.TEST`` with MultiMaskCOCOEvaluator."""
    results = OrderedDict()
    for dataset_name in cfg.DATASETS.TEST:
        loader = MultiMaskTrainer.build_test_loader(cfg, dataset_name)
        evaluator = MultiMaskTrainer.build_evaluator(cfg, dataset_name)
        results[dataset_name] = inference_on_dataset(model, loader, evaluator)
        if comm.is_main_process():
            logger.info(f"Evaluation results for {dataset_name} in csv format:")
            print_csv_format(results[dataset_name])
    return results[cfg.DATASETS.TEST[0]] if len(results) == 1 else results


def do_train(cfg, model, resume: bool = False) -> None:
    """
    Train `model` (already wrapped in DDP when distributed) for ``cfg.SOLVER.MAX_ITER`` iterations.

    Args:
        cfg: a frozen config with multimask's keys.
        model: the model, in train mode.
        resume: continue from ``OUTPUT_DIR/last_checkpoint`` (model, optimizer, scheduler, iteration)
            instead of initialising from ``MODEL.WEIGHTS``.
    """
    model.train()
    # the default trainer's builders: SOLVER.CLIP_GRADIENTS clips inside optimizer.step()
    optimizer = MultiMaskTrainer.build_optimizer(cfg, model)
    scheduler = MultiMaskTrainer.build_lr_scheduler(cfg, optimizer)
    # detectron2's AMPTrainer step: float16 autocast, losses scaled by a GradScaler, which unscales
    # the gradients before optimizer.step() clips them
    amp = amp_enabled(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE)
    grad_scaler = torch.amp.GradScaler("cuda", enabled=amp)
    checkpointables = {"optimizer": optimizer, "scheduler": scheduler}
    if amp:
        checkpointables["grad_scaler"] = grad_scaler
    checkpointer = AtomicDetectionCheckpointer(model, cfg.OUTPUT_DIR, **checkpointables)
    checkpoint = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    start_iter = checkpoint.get("iteration", -1) + 1
    max_iter = cfg.SOLVER.MAX_ITER
    periodic_checkpointer = PeriodicCheckpointer(
        checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_iter=max_iter
    )
    writers = default_writers(cfg.OUTPUT_DIR, max_iter) if comm.is_main_process() else []
    data_loader = MultiMaskTrainer.build_train_loader(cfg)
    # the data position and RNG states of start_iter, so a resumed run continues the same curve
    restore_resume_state(checkpoint.get("resume_state"), data_loader, start_iter)
    val_loss = build_validation_loss_hook(cfg, model)  # None unless TEST.EVAL_PERIOD > 0
    logger.info(f"Starting training from iteration {start_iter}")
    with EventStorage(start_iter) as storage:
        for data, iteration in zip(data_loader, range(start_iter, max_iter)):
            storage.iter = iteration
            try:
                with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    loss_dict = model(data)
                    losses = sum(loss_dict.values())
            except FloatingPointError as e:  # e.g. the RPN's Inf/NaN boxes, which do not say when
                raise FloatingPointError(f"{e} (at iteration {iteration})") from e
            if not torch.isfinite(losses).all():
                raise FloatingPointError(
                    f"Loss became infinite or NaN at iteration={iteration}!\nloss_dict = {loss_dict}"
                )
            reduced = {k: v.item() for k, v in comm.reduce_dict(loss_dict).items()}
            if comm.is_main_process():
                storage.put_scalars(total_loss=sum(reduced.values()), **reduced)

            optimizer.zero_grad()
            grad_scaler.scale(losses).backward()
            grad_scaler.step(optimizer)  # optimizer.step() unless the scaled gradients overflowed
            grad_scaler.update()
            storage.put_scalar("lr", optimizer.param_groups[0]["lr"], smoothing_hint=False)
            scheduler.step()

            if cfg.TEST.EVAL_PERIOD > 0 and (iteration + 1) % cfg.TEST.EVAL_PERIOD == 0 and (
                iteration != max_iter - 1
            ):
                with preserve_rng_states():  # evaluating must not change the training draws
                    results = do_test(cfg, model)
                if comm.is_main_process():
                    storage.put_scalars(**flatten_results_dict(results), smoothing_hint=False)
                comm.synchronize()
            if val_loss is not None:
                val_loss.run_if_due(iteration, max_iter, storage)
            if iteration - start_iter > 5 and ((iteration + 1) % 20 == 0 or iteration == max_iter - 1):
                for writer in writers:
                    writer.write()
            extra = {}
            if checkpoint_due(iteration, cfg.SOLVER.CHECKPOINT_PERIOD, max_iter):
                extra["resume_state"] = capture_resume_state(data_loader)  # on every process
            periodic_checkpointer.step(iteration, **extra)
    for writer in writers:
        writer.close()

