"""A DetectionCheckpointer whose files appear atomically, so an interrupted save never leaves a
half-written checkpoint behind ``last_checkpoint``."""
import os
from typing import Any

import torch

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicDetectionCheckpointer"]


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """
    DetectionCheckpointer that writes ``<name>.pth`` and ``last_checkpoint`` to temporary files and renames
    them into place (a rename within one folder is atomic on POSIX and Windows). A process killed during a
    save leaves at worst a stale ``*.tmp`` file; ``--resume`` then loads the previous complete checkpoint.
    """

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
