"""
Training and evaluation from a detectron2 LazyConfig (``.py`` config) with the features of the YAML path:
atomic checkpoints, an exact ``--resume``, strict ``--eval-only`` weights, periodic and final evaluation with MultiMaskCOCOEvaluator, the
validation loss, writers, custom imports and CPU data parallel. ``train_net.py`` calls ``lazy_main``
for ``--config-file *.py``.

A LazyConfig for it has ``model``, ``dataloader.{train, test, evaluator}``, ``optimizer``,
``lr_multiplier``, ``train`` (detectron2's ``common/train.py`` keys plus ``val_loss_max_images``) and
optionally ``custom_imports``; see ``configs/common/``.
"""
import logging
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from detectron2.config import CfgNode, LazyConfig, instantiate
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.registry import locate

from ..config import import_custom_modules
from ..data.build import (
    LAZY_KEYS,
    MultiDatasetDicts,
    RemappedClassesEvaluator,
    TrainClasses,
    check_train_mask_names,
    dataset_weights_sampler,
    multi_dataset_dicts,
    remap_dataset_dicts,
    remap_given_classes,
    resolve_train_classes,
)
from ..evaluation import attach_given_boxes
from ..evaluation.given_boxes import GIVEN_INSTANCES
from .checkpoint import AtomicDetectionCheckpointer
from .hooks import ValidationLossHook, build_validation_loss_loader
from .launch import ddp_device_ids
from .resume import ResumeStateHook, preserve_rng_states, resumable_train_loader
from .trainer import amp_enabled

__all__ = [
    "lazy_setup",
    "lazy_do_test",
    "lazy_do_train",
    "lazy_main",
    "build_lazy_validation_loss_hook",
    "lazy_train_classes",
]

logger = logging.getLogger(__name__)


def lazy_setup(config_file: str, opts: List[str], args: Any = None) -> DictConfig:
    """
    Load a LazyConfig, apply dotted overrides (``train.max_iter=100``,
    ``model.roi_heads.mask_head.loss_weights=[1,0.5]``) and import its ``custom_imports``.

    Args:
        config_file: a ``.py`` (or ``.yaml`` saved by LazyConfig.save) config.
        opts: overrides in Hydra's ``key=value`` syntax.
        args: the command-line args; when given, detectron2's ``default_setup`` runs (logging, seed,
            config saved to ``train.output_dir``).
    """
    cfg = LazyConfig.load(config_file)
    cfg = LazyConfig.apply_overrides(cfg, opts)
    if args is not None:
        default_setup(cfg, args)
    import_custom_modules(cfg)
    return cfg


def _names(dataset_cfg) -> List[str]:
    names = dataset_cfg.names
    return [names] if isinstance(names, str) else list(names)


def _split_names(cfg: DictConfig, split: str) -> List[str]:
    loader = cfg.dataloader.get(split)
    if loader is not None and "names" in loader.get("dataset", {}):
        return _names(loader.dataset)
    return []


def _is_target(node, fn) -> bool:
    target = node.get("_target_") if hasattr(node, "get") else None
    return target is not None and (locate(target) if isinstance(target, str) else target) is fn


def lazy_train_classes(cfg: DictConfig) -> TrainClasses:
    """
    The training classes: ``dataloader.train.dataset``'s ``class_agnostic`` / ``class_union``
    when it is a ``multi_dataset_dicts`` (the YAML keys MULTIMASK.CLASS_AGNOSTIC_TRAIN /
    CLASS_UNION), checked against ``dataloader.test``'s dataset.
    """
    dataset = cfg.dataloader.get("train", {}).get("dataset", {})
    multi = _is_target(dataset, multi_dataset_dicts)
    return resolve_train_classes(
        _split_names(cfg, "train"),
        _split_names(cfg, "test"),
        class_agnostic=bool(multi and dataset.get("class_agnostic", False)),
        class_union=bool(multi and dataset.get("class_union", False)),
        keys=LAZY_KEYS,
    )


def _check_datasets(cfg: DictConfig) -> None:
    """
    Fail before training if no training dataset has one of the model's mask names (or a test
    dataset lacks one), if the classes differ without class_agnostic / class_union, or if
    model.roi_heads.num_classes is not the training class count.
    """
    mask_names = list(cfg.model.roi_heads.mask_head.mask_names)
    check_train_mask_names(_split_names(cfg, "train"), _split_names(cfg, "test"), mask_names)
    classes = lazy_train_classes(cfg).classes
    num_classes = cfg.model.roi_heads.num_classes
    if classes is not None and len(classes) != num_classes:
        raise ValueError(
            f"The training datasets {_split_names(cfg, 'train')} have {len(classes)} classes "
            f"{classes[:10]} but model.roi_heads.num_classes is {num_classes}; set it to "
            f"{len(classes)}."
        )


def _ddp(model, cfg: DictConfig):
    kwargs = dict(cfg.train.get("ddp", {}))
    # None on the CPU (DDP rejects device ids there), else the GPU that launch selected
    kwargs["device_ids"] = ddp_device_ids(cfg.train.device)
    return create_ddp_model(model, **kwargs)


def _build_train_loader(loader_cfg: DictConfig):
    """
    ``dataloader.train``; detectron2's ``build_detection_train_loader`` (the usual target) is
    built by ``resumable_train_loader``, with the same arguments, so that ``--resume`` is exact.
    """
    # resolved against the whole config first: the mapper's interpolations point outside of it
    node = OmegaConf.to_container(loader_cfg, resolve=True)
    if _is_target(node, build_detection_train_loader):
        node["_target_"] = resumable_train_loader
    if not _is_target(node.get("dataset", {}), multi_dataset_dicts):
        return instantiate(node)
    # multi_dataset_dicts' weights: detectron2's RepeatFactorTrainingSampler over its datasets
    dataset = instantiate(node.pop("dataset"))
    sampler = instantiate(node.pop("sampler", None))
    if isinstance(dataset, MultiDatasetDicts) and dataset.weights:
        if sampler is not None:
            raise ValueError("dataloader.train: give dataset.weights or a sampler, not both")
        sampler = dataset_weights_sampler(dataset.sizes, dataset.weights)
    target = node.pop("_target_")
    target = locate(target) if isinstance(target, str) else target
    return target(dataset=dataset, sampler=sampler, **{k: instantiate(v) for k, v in node.items()})


def _build_test_loader(cfg: DictConfig):
    """
    ``dataloader.test``; when the evaluator has ``eval_boxes`` ("gt" or a detections file, the
    YAML key MULTIMASK.EVAL_BOXES), its dataset dicts carry those boxes (``attach_given_boxes``).
    """
    eval_boxes = cfg.dataloader.get("evaluator", {}).get("eval_boxes", "") or ""
    if not eval_boxes:
        return instantiate(cfg.dataloader.test)
    # resolved against the whole config first: the mapper's interpolations point outside of it
    node = OmegaConf.to_container(cfg.dataloader.test, resolve=True)
    names = node["dataset"].get("names", [])
    names = [names] if isinstance(names, str) else list(names)
    if len(names) != 1:
        raise ValueError(
            f"dataloader.evaluator.eval_boxes={eval_boxes!r} needs one test dataset, got {names}"
        )
    node["dataset"] = {
        "_target_": remap_given_classes,  # the given classes in the model's
        "dicts": {
            "_target_": attach_given_boxes,
            "dicts": node["dataset"],
            "eval_boxes": eval_boxes,
            "dataset_name": names[0],
        },
        "id_map": lazy_train_classes(cfg).id_maps.get(names[0]),
        "key": GIVEN_INSTANCES,
    }
    return instantiate(node)


def _build_evaluator(cfg: DictConfig):
    """
    ``dataloader.evaluator``; class-agnostic when the training dataset is class_agnostic, and
    with class_union the predicted classes mapped from the union to the test set's list.
    """
    train = lazy_train_classes(cfg)
    node = OmegaConf.to_container(cfg.dataloader.evaluator, resolve=True)
    if train.mode == "agnostic":
        node["class_agnostic"] = True
    evaluator = instantiate(node)
    name = node.get("dataset_name")
    if train.mode == "union" and isinstance(name, str):
        if list(MetadataCatalog.get(name).thing_classes) != train.classes:
            return RemappedClassesEvaluator(evaluator, train.classes, name)
    return evaluator


def lazy_do_test(cfg: DictConfig, model) -> Dict[str, Any]:
    """
    Evaluate on ``dataloader.test`` with ``dataloader.evaluator``; {} when there is no evaluator.
    ``dataloader.evaluator.eval_boxes`` ("gt" or a detections file) and ``class_agnostic`` are
    the YAML keys MULTIMASK.EVAL_BOXES and CLASS_AGNOSTIC_EVAL.
    """
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, _build_test_loader(cfg), _build_evaluator(cfg))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def build_lazy_validation_loss_hook(cfg: DictConfig, model) -> Optional[ValidationLossHook]:
    """
    The validation-loss hook of a LazyConfig: ``dataloader.test``'s dataset and mapper, the mapper with
    ``is_train=True`` so that it emits ground truth, on ``train.val_loss_max_images`` images every
    ``train.eval_period`` iterations. None when either is 0 or there is no ``dataloader.test``.
    """
    max_images = cfg.train.get("val_loss_max_images", 0)
    if cfg.train.eval_period <= 0 or max_images <= 0 or "test" not in cfg.dataloader:
        return None
    test = cfg.dataloader.test
    # resolved against the whole config first: the mapper's interpolations point outside of it
    mapper_cfg = OmegaConf.to_container(test.mapper, resolve=True)
    mapper_cfg["is_train"] = True
    batch_size = cfg.dataloader.train.get("total_batch_size", comm.get_world_size())
    # in the model's classes (class_agnostic / class_union remap the test set's ids)
    names = _split_names(cfg, "test")
    id_map = lazy_train_classes(cfg).id_maps.get(names[0]) if len(names) == 1 else None
    loader = build_validation_loss_loader(
        remap_dataset_dicts(instantiate(test.dataset), id_map),
        instantiate(mapper_cfg),
        max_images,
        batch_size=max(batch_size // comm.get_world_size(), 1),
        num_workers=test.get("num_workers", 0),
    )
    return ValidationLossHook(
        cfg.train.eval_period, model, loader, seed=max(cfg.train.get("seed", 0), 0)
    )


def _with_gradient_clipping(optimizer, cfg):
    """
    Clip gradients as the YAML key SOLVER.CLIP_GRADIENTS does, from ``train.clip_gradients``
    (``dict(enabled, clip_type "value" | "norm", clip_value, norm_type)``; absent or
    not enabled: no clipping), with detectron2's own clipping.
    """
    clip = cfg.train.get("clip_gradients", None)
    if not clip or not clip.get("enabled", False):
        return optimizer
    unknown = set(clip) - {"enabled", "clip_type", "clip_value", "norm_type"}
    if unknown:
        raise ValueError(
            f"train.clip_gradients has unknown keys {sorted(unknown)}; known: enabled, clip_type, "
            "clip_value, norm_type"
        )
    node = CfgNode(
        {
            "SOLVER": {
                "CLIP_GRADIENTS": {
                    "ENABLED": True,
                    "CLIP_TYPE": clip.get("clip_type", "value"),
                    "CLIP_VALUE": float(clip.get("clip_value", 1.0)),
                    "NORM_TYPE": float(clip.get("norm_type", 2.0)),
                }
            }
        }
    )
    return maybe_add_gradient_clipping(node, optimizer)


def lazy_do_train(cfg: DictConfig, resume: bool = False) -> Dict[str, Any]:
    """
    Train with detectron2's SimpleTrainer (AMPTrainer if ``train.amp.enabled``) and hooks.

    Args:
        cfg: a loaded LazyConfig.
        resume: continue from ``train.output_dir/last_checkpoint`` (model, optimizer, scheduler,
            iteration) instead of loading ``train.init_checkpoint``.

    Returns:
        The results of the last evaluation ({} if none ran).
    """
    _check_datasets(cfg)
    model = instantiate(cfg.model)
    logger.info(f"Model:\n{model}")
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = _with_gradient_clipping(instantiate(cfg.optimizer), cfg)
    train_loader = _build_train_loader(cfg.dataloader.train)
    model = _ddp(model, cfg)
    amp_key = cfg.train.get("amp", {}).get("enabled", False)
    amp = amp_enabled(amp_key, cfg.train.device, key="train.amp.enabled")
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = AtomicDetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)

    last_results: Dict[str, Any] = {}

    def test_and_keep():
        last_results.clear()
        with preserve_rng_states():  # evaluating must not change the training draws
            last_results.update(lazy_do_test(cfg, model))
        return last_results

    main = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            # the data position and RNG states saved with each checkpoint, for an exact --resume:
            # on every process, before the checkpointer
            ResumeStateHook(train_loader, cfg.train.checkpointer.period),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, test_and_keep),
            build_lazy_validation_loss_hook(cfg, model),
            # last, so that evaluation and validation-loss values are written with their iteration
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.get("log_period", 20),
            )
            if main
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return dict(last_results)


def lazy_main(args) -> Dict[str, Any]:
    """``train_net.py`` for a LazyConfig: ``--eval-only`` / ``--resume`` / training."""
    cfg = lazy_setup(args.config_file, args.opts, args)
    if args.eval_only:
        _check_datasets(cfg)
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = _ddp(model, cfg)
        # strict: evaluating weights that leave part of the model random gives a silently wrong AP
        AtomicDetectionCheckpointer(
            model, save_dir=cfg.train.output_dir, strict_model=True
        ).resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        return lazy_do_test(cfg, model)
    return lazy_do_train(cfg, resume=args.resume)
