"""SGD as detectron2's YAML defaults set it (momentum 0.9, weight decay 1e-4, none on norm layers)."""
from detectron2.model_zoo import get_config

SGD = get_config("common/optim.py").SGD
