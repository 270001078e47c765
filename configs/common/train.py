"""
Training options read by ``multimask.engine.lazy_train`` (detectron2's ``common/train.py`` plus multimask's
keys), and the custom imports of a LazyConfig.
"""
import torch

from detectron2.model_zoo import get_config

train = get_config("common/train.py").train
train.device = "cuda" if torch.cuda.is_available() else "cpu"
train.seed = -1  # < 0: a random seed, logged by default_setup
# Validation loss every eval_period iterations on this many images of dataloader.test; 0 = off.
train.val_loss_max_images = 64
# Gradient clipping, as the YAML's SOLVER.CLIP_GRADIENTS (clip_type "value" or "norm").
train.clip_gradients = dict(enabled=False, clip_type="value", clip_value=1.0, norm_type=2.0)

# Modules imported before the model and datasets are built (e.g. ["my_pkg.heads"]), so that what they
# register can be selected by name. allow_failed=True: a module that fails to import is a warning.
custom_imports = dict(modules=[], allow_failed=False)
