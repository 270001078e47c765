"""AtomicDetectionCheckpointer reads MODEL.WEIGHTS as detectron2 does: query options, URIs, DDP."""

import pytest
import torch

from multimask.engine.launch import launch
from detectron2.utils import comm

from multimask.engine import AtomicDetectionCheckpointer

from .common import get_tiny_model


@pytest.fixture
def saved(tmp_path):
    model = get_tiny_model()
    AtomicDetectionCheckpointer(model, str(tmp_path)).save("model")
    return model, str(tmp_path / "model.pth")


def test_query_options_are_not_part_of_the_file_name(saved, tmp_path):
    model, path = saved
    target = get_tiny_model()
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    AtomicDetectionCheckpointer(target).load(path + "?matching_heuristics=True")
    for k, v in model.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*missing\.pth does not exist"):
        AtomicDetectionCheckpointer(target).load(str(tmp_path / "missing.pth?matching_heuristics=1"))


def _load_on_two_workers(main_file, other_file, out):
    """Worker of launch(): rank 0 loads `main_file`, rank 1 `other_file` (absent on its disk)."""
    model = get_tiny_model()  # the same random weights on both
    with torch.no_grad():
        for p in model.parameters():
            p.add_(comm.get_rank() + 1)  # ... made to differ, as other checkpoints would
    path = main_file if comm.is_main_process() else other_file
    try:
        AtomicDetectionCheckpointer(model).load(path)
        result = {k: v.clone() for k, v in model.state_dict().items()}
    except FileNotFoundError as e:
        result = str(e)
    torch.save(result, f"{out}.{comm.get_rank()}")


@pytest.mark.parametrize("main_has_file", [True, False])
def test_distributed_file_on_the_main_worker_only(saved, tmp_path, main_has_file):
    """detectron2's rule: the main worker must have the file; the others take its weights."""
    model, path = saved
    missing, out = str(tmp_path / "missing.pth"), str(tmp_path / "result")
    files = (path, missing) if main_has_file else (missing, path)
    launch(_load_on_two_workers, 2, dist_url="auto", args=(*files, out), device="cpu")
    results = [torch.load(f"{out}.{rank}", weights_only=False) for rank in (0, 1)]
    if main_has_file:
        for result in results:
            for k, v in model.state_dict().items():
                assert torch.equal(result[k], v), k
    else:
        assert results[0] == f"checkpoint {missing} not found on the main worker"
        assert results[1].endswith("not found on the main worker")  # the same on every worker
