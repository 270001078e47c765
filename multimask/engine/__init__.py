from .box_predictor import MultiMaskBoxPredictor
from .checkpoint import AtomicDetectionCheckpointer
from .hooks import ValidationLossHook, build_validation_loss_hook, compute_validation_loss
from .launch import config_device, distributed_env, launch
from .plain_train_loop import do_test, do_train
from .slurm import SubmititJob
from .trainer import (
    MultiMaskTrainer,
    amp_enabled,
    check_datasets,
    check_num_classes,
    ddp_kwargs,
)
