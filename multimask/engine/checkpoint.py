"""A DetectionCheckpointer whose files appear atomically, so an interrupted save never leaves a
half-written checkpoint behind ``last_checkpoint``, and whose loading fails with the file's name on
files that are not checkpoints or hold the weights of another model."""

import os
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

import torch
import torch.distributed as dist

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm

__all__ = ["AtomicDetectionCheckpointer"]


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """
    DetectionCheckpointer that writes ``<name>.pth`` and ``last_checkpoint`` to temporary files and
    renames them into place (a rename within one folder is atomic on POSIX and Windows). A process
    killed during a save leaves at worst a stale ``*.tmp`` file; ``--resume`` then loads the
    previous complete checkpoint.

    Loading raises, naming the file: FileNotFoundError for a missing local file, ValueError for a
    file that cannot be read as a checkpoint (truncated, corrupt, another format) and for weights of
    which no tensor fits the model (another architecture). With ``strict_model=True`` (evaluation),
    a checkpoint that leaves model parameters uninitialised is an error too, instead of detectron2's
    warning.
    """

    def __init__(self, model, save_dir: str = "", *, strict_model: bool = False, **kwargs: Any):
        """
        Args:
            model, save_dir, kwargs: as for DetectionCheckpointer (``save_to_disk``,
            checkpointables).
            strict_model: fail when the checkpoint lacks (or has another shape for) any model
            tensor.
        """
        super().__init__(model, save_dir, **kwargs)
        self.strict_model = strict_model
        self._loading: Optional[str] = None

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        # DetectionCheckpointer reads a query (``model.pth?matching_heuristics=True``) as options:
        # it is not part of the file name. A URI is fetched by the path manager.
        local = urlparse(path)._replace(query="").geturl() if path else ""
        missing_here = bool(local) and "://" not in local and not os.path.isfile(local)
        missing = comm.all_gather(missing_here) if comm.get_world_size() > 1 else [missing_here]
        synced = len(missing) > 1 and any(missing)
        if synced:
            # detectron2's rule (DetectionCheckpointer applies it to a DDP model, which fvcore's
            # Checkpointer has already unwrapped): the main worker must have the file; the others
            # get the model's weights from it
            if missing[0]:
                raise FileNotFoundError(f"checkpoint {local} not found on the main worker")
            if missing_here:
                self.logger.warning(
                    f"checkpoint {local} not found on worker {comm.get_rank()}: it takes the "
                    "model weights from the main worker (not the optimizer or iteration, so a "
                    "--resume may not continue exactly)."
                )
                path = ""
        elif missing_here:  # fvcore would fail with an AssertionError
            raise FileNotFoundError(f"checkpoint {local} does not exist (MODEL.WEIGHTS {path})")
        self._loading = path
        try:
            ret = super().load(path, *args, **kwargs)
        finally:
            self._loading = None
            # DetectionCheckpointer resets it only after a successful load, and asserts it is unset
            # when a load starts: without this, one failed load would make every later one fail
            self._parsed_url_during_load = None
        if synced:
            for tensor in self.model.state_dict().values():
                dist.broadcast(tensor, src=0)
        return ret

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            checkpoint = super()._load_file(filename)
        except Exception as e:  # torch.load / pickle raise many types for a bad file
            raise ValueError(
                f"cannot read checkpoint {filename}: {type(e).__name__}: {str(e).splitlines()[0]}. "
                "The file is truncated or corrupt (e.g. a copy or save that did not finish), not "
                "a PyTorch / detectron2 checkpoint, or holds objects torch.load(weights_only) "
                "refuses."
            ) from e
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
            held = type(checkpoint.get("model", checkpoint)).__name__
            raise ValueError(
                f"checkpoint {filename} holds a {held}, not a state dict of model weights."
            )
        return checkpoint

    def _load_model(self, checkpoint: Dict[str, Any]):
        num_tensors = len(checkpoint["model"])
        sample = sorted(checkpoint["model"])[:3]
        incompatible = super()._load_model(checkpoint)
        model_keys = list(self.model.state_dict())
        missing = set(incompatible.missing_keys)
        # parameters only: the checkpointers never report some buffers missing (pixel_mean/std,
        # BatchNorm's num_batches_tracked)
        loaded = [k for k, _ in self.model.named_parameters() if k not in missing]
        where = f"checkpoint {self._loading}"
        if model_keys and not loaded:
            raise ValueError(
                f"{where}: none of its {num_tensors} tensors fits the model: it holds the weights "
                f"of another architecture (its keys: {sample}...; the model's: {model_keys[:3]}...)"
            )
        if self.strict_model and missing:
            names = _summarize(sorted(missing))
            raise ValueError(
                f"{where} lacks {len(missing)} of the model's {len(model_keys)} tensors ({names}), "
                "or has them with other shapes: it was trained with another config (e.g. other "
                "MASK_NAMES, NUM_CLASSES or head layout), so the model would run with random "
                "weights."
            )
        return incompatible

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        self._write_atomically(save_file, lambda f: torch.save(data, f), "wb")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        self._write_atomically(save_file, lambda f: f.write(last_filename_basename), "w")

    def _write_atomically(self, path: str, write, mode: str) -> None:
        if "://" in path:  # a remote store (iopath handler): no rename to rely on, write in place
            with self.path_manager.open(path, mode) as f:
                write(f)
            return
        tmp = f"{path}.tmp"
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _summarize(keys: List[str], limit: int = 4) -> str:
    """A few of `keys`, and how many more."""
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
