"""
Exact resumption of an interrupted run.

detectron2's ``--resume`` restores the model, optimizer, LR scheduler and iteration, but the resumed
run starts the training sampler over at the beginning of its shuffled stream and draws random
numbers (data augmentation, proposal sampling) from generators freshly seeded at process start. So
iteration N of a resumed run sees other images and other random draws than iteration N of the
uninterrupted run. This module closes both gaps:

* ``ResumableTrainLoader`` wraps detectron2's train loader with a sampler that skips the images that
  iterations ``0 .. N-1`` consumed, and gives the DataLoader its own generator, so creating the
  loader's iterator does not draw from the global torch RNG (that would shift all later draws);
* ``capture_resume_state`` / ``restore_resume_state`` save, with each checkpoint, the sampler's seed
  and every process' torch, numpy and Python RNG states, and restore them on resume.

With ``DATALOADER.NUM_WORKERS 0`` on CPU, a resumed run then computes the same losses as the
uninterrupted one (see docs/reliability.md for what stays approximate: data workers, other world
sizes, mixed aspect-ratio groups, GPU kernels).
"""

import contextlib
import itertools
import logging
import random
from typing import Any, Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = [
    "ResumableTrainLoader",
    "ResumeStateHook",
    "SkippingSampler",
    "build_resumable_train_loader",
    "resumable_train_loader",
    "capture_resume_state",
    "checkpoint_due",
    "get_rng_states",
    "preserve_rng_states",
    "restore_resume_state",
    "set_rng_states",
]

logger = logging.getLogger(__name__)


def get_rng_states() -> Dict[str, Any]:
    """
    This process' random generator states: torch CPU (and CUDA when initialised), numpy and Python's
    ``random``, as tensors, lists and ints only, so ``torch.load(weights_only=True)`` can read them.
    """
    _, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    version, py_state, gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), cached_gauss],
        "python": [version, list(py_state), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    """Restore what ``get_rng_states`` returned (CUDA states only when CUDA is in use here too)."""
    torch.set_rng_state(states["torch"])
    keys, pos, has_gauss, cached_gauss = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached_gauss))
    version, py_state, gauss = states["python"]
    random.setstate((version, tuple(py_state), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def preserve_rng_states() -> Iterator[None]:
    """
    Run a block (evaluation during training) without changing this process' RNG states, so that a
    run's random draws do not depend on whether, or how often, it was evaluated.
    """
    states = get_rng_states()
    try:
        yield
    finally:
        set_rng_states(states)


class SkippingSampler(Sampler):
    """
    A training sampler (detectron2's ``TrainingSampler`` or any infinite per-process index stream)
    that starts ``skip`` indices into its stream: where an interrupted run's sampler had got to.
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        # indices of this process' stream to drop, set by ResumableTrainLoader.start_at
        self.skip = 0

    @property
    def seed(self) -> Optional[int]:
        """The wrapped sampler's shuffle seed (detectron2's samplers keep it as ``_seed``)."""
        return getattr(self.sampler, "_seed", None)

    @seed.setter
    def seed(self, value: int) -> None:
        if hasattr(self.sampler, "_seed"):
            self.sampler._seed = int(value)

    def __iter__(self) -> Iterator[int]:
        # Dropping indices costs nothing next to reading images: 1M indices take ~0.1 s.
        return itertools.islice(iter(self.sampler), self.skip, None)


class ResumableTrainLoader:
    """
    The batches of a training run (an iterable of lists of mapped dicts, as detectron2's train
    loader), which can start at the batch of any iteration: ``start_at(N)`` before iterating.
    """

    def __init__(self, loader: Iterable, sampler: SkippingSampler, images_per_iter: int):
        """
        Args:
            loader: detectron2's train loader built on `sampler`.
            sampler: the loader's sampler.
            images_per_iter: images one iteration takes from this process' stream.
        """
        self.loader = loader
        self.sampler = sampler
        self.images_per_iter = images_per_iter

    def start_at(self, iteration: int) -> None:
        """Make the next ``iter()`` start with the batch of `iteration` (as run uninterrupted)."""
        self.sampler.skip = iteration * self.images_per_iter

    def __iter__(self) -> Iterator[List[Dict[str, Any]]]:
        return iter(self.loader)


def build_resumable_train_loader(cfg, mapper) -> Iterable:
    """
    detectron2's ``build_detection_train_loader(cfg, mapper)``, able to resume mid-stream (see
    ``resumable_train_loader``).

    Args:
        cfg: a detectron2 config (DATASETS.TRAIN, DATALOADER.*, SOLVER.IMS_PER_BATCH).
        mapper: the dataset mapper.
    """
    return resumable_train_loader(**build_detection_train_loader.from_config(cfg, mapper=mapper))


def resumable_train_loader(*, dataset, total_batch_size: int, sampler=None, **kwargs) -> Iterable:
    """
    detectron2's ``build_detection_train_loader`` with the same arguments (a LazyConfig's
    ``dataloader.train``), with a ``SkippingSampler`` and a DataLoader generator of its own.

    Returns:
        A ResumableTrainLoader (detectron2's own loader for an iterable dataset: it has no sampler).
    """
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return build_detection_train_loader(
            dataset, total_batch_size=total_batch_size, sampler=sampler, **kwargs
        )
    # detectron2's default for a map-style dataset
    sampler = SkippingSampler(sampler if sampler is not None else TrainingSampler(len(dataset)))
    # Seeds the loader's worker processes (none with NUM_WORKERS 0); rank-dependent as detectron2's
    # default worker seeds are, since default_setup seeds torch with SEED + rank.
    kwargs.setdefault("seed", torch.initial_seed() % 2**31)
    loader = build_detection_train_loader(
        dataset, total_batch_size=total_batch_size, sampler=sampler, **kwargs
    )
    return ResumableTrainLoader(loader, sampler, total_batch_size // comm.get_world_size())


def checkpoint_due(iteration: int, period: int, max_iter: int) -> bool:
    """Whether fvcore's PeriodicCheckpointer saves after `iteration` (the same rule)."""
    return (period > 0 and (iteration + 1) % period == 0) or iteration >= max_iter - 1


def capture_resume_state(loader: Optional[Iterable]) -> Dict[str, Any]:
    """
    What a checkpoint needs for an exact resume: the sampler's seed and every process' RNG states.
    A collective call in distributed runs: every process must make it, at the same iteration.
    """
    sampler = loader.sampler if isinstance(loader, ResumableTrainLoader) else None
    return {
        "sampler_seed": None if sampler is None else sampler.seed,
        "rng_states": comm.all_gather(get_rng_states()),
    }


def restore_resume_state(
    state: Optional[Dict[str, Any]], loader: Optional[Iterable], start_iter: int
) -> None:
    """
    Prepare a resumed run: start `loader` at `start_iter` and restore the seed and RNG states saved
    by ``capture_resume_state`` (missing in checkpoints of older runs: then the loader still skips
    the consumed images but the random draws differ from the uninterrupted run's, with a warning).
    """
    if isinstance(loader, ResumableTrainLoader):
        if state and state.get("sampler_seed") is not None:
            loader.sampler.seed = state["sampler_seed"]
        loader.start_at(start_iter)
    if start_iter == 0:
        return
    rank, states = comm.get_rank(), (state or {}).get("rng_states") or []
    if rank < len(states):
        set_rng_states(states[rank])
        logger.info(f"Restored the data position and RNG states of iteration {start_iter}")
    else:
        logger.warning(
            f"The checkpoint has no RNG state for process {rank}: the resumed run draws other "
            "random numbers (augmentation, proposal sampling) than an uninterrupted run would."
        )


class ResumeStateHook(HookBase):
    """
    Puts ``capture_resume_state`` into the trainer's checkpoints (as the hook's ``state_dict``) and
    applies it when a run resumes. Register it, on every process, before the PeriodicCheckpointer.
    """

    def __init__(self, loader: Optional[Iterable], checkpoint_period: int):
        """
        Args:
            loader: the trainer's data loader (a ResumableTrainLoader to restore the data position).
            checkpoint_period: SOLVER.CHECKPOINT_PERIOD; the state is captured when a save is due.
        """
        self._loader = loader
        self._period = checkpoint_period
        self._state: Dict[str, Any] = {}
        self._loaded: Optional[Dict[str, Any]] = None

    def before_train(self):
        # the checkpoint (and this hook's state) is loaded by resume_or_load, before train() starts
        restore_resume_state(self._loaded, self._loader, self.trainer.start_iter)

    def after_step(self):
        if checkpoint_due(self.trainer.iter, self._period, self.trainer.max_iter):
            self._state = capture_resume_state(self._loader)

    def state_dict(self) -> Dict[str, Any]:
        return self._state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._loaded = state_dict
