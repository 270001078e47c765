"""
A fake accelerator for counting host <-> device transfers on a CPU-only machine.

Tensors "on the device" are CPU tensors of the subclass ``OnDevice``, whose ``.device`` reads
``FAKE`` (the meta device: anything that slips through to a real meta tensor fails loudly). While
a ``TransferLog`` is active, every torch call is seen (a ``TorchFunctionMode``):

- ``.to(FAKE)`` / a factory with ``device=FAKE`` from host data (``torch.tensor``, ``as_tensor``)
  is a host-to-device copy ("H2D"); a factory without data (``zeros``, ``arange``) allocates on the
  device, no copy;
- ``.cpu()``, ``.to("cpu")``, ``.numpy()``, ``.item()``, ``.tolist()``, ``bool()`` / ``int()`` /
  ``float()``, ``nonzero``, ``unique``, ``masked_select`` and boolean-mask indexing of a device
  tensor wait for the device and copy to the host ("D2H:<name>");
- an op that mixes a device tensor with a host tensor that is not a 0-dim scalar is an implicit
  copy, or an error on CUDA ("mixed:<name>"). ``module_on_device`` puts a model's parameters and
  buffers on the device.

Each event records the call and the innermost frame in multimask's code that made it.
"""

import os
import sys
from typing import Any, List, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import multimask

FAKE = torch.device("meta")
_PACKAGE = os.path.dirname(multimask.__file__)

_SYNCS = {
    torch.Tensor.item: "item",
    torch.Tensor.tolist: "tolist",
    torch.Tensor.numpy: "numpy",
    torch.Tensor.__bool__: "bool",
    torch.Tensor.__int__: "int",
    torch.Tensor.__float__: "float",
    torch.Tensor.__index__: "index",
    torch.Tensor.__array__: "array",
    torch.Tensor.nonzero: "nonzero",
    torch.nonzero: "nonzero",
    torch.Tensor.unique: "unique",
    torch.unique: "unique",
    torch.Tensor.masked_select: "masked_select",
    torch.masked_select: "masked_select",
}
_FROM_HOST_DATA = {torch.tensor, torch.as_tensor, torch.asarray}


class OnDevice(torch.Tensor):
    """A CPU tensor that plays a tensor on the accelerator FAKE."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return FAKE


def on_device(t: torch.Tensor) -> torch.Tensor:
    """`t` as a tensor already on the fake device (no transfer recorded)."""
    return t.as_subclass(OnDevice)


def module_on_device(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with every parameter and buffer on the fake device (in place; no transfer recorded)."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:  # a Parameter of a subclass keeps the subclass (torch >= 2.0)
                m._parameters[name] = torch.nn.Parameter(on_device(p.detach()), p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = on_device(b)
    return module


def _is_fake(device: Any) -> bool:
    if isinstance(device, str):
        device = torch.device(device)
    return isinstance(device, torch.device) and device.type == FAKE.type


def _is_host_cpu(device: Any) -> bool:
    if isinstance(device, str):
        device = torch.device(device)
    return isinstance(device, torch.device) and device.type == "cpu"


def _plain(x: Any) -> Any:
    return x.as_subclass(torch.Tensor) if isinstance(x, OnDevice) else x


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_PACKAGE):
            return f"{os.path.relpath(name, _PACKAGE)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


class TransferLog(TorchFunctionMode):
    """Records host <-> device events (see the module docstring) in ``self.events``."""

    def __init__(self):
        super().__init__()
        self.events: List[Tuple[str, str]] = []

    def kinds(self) -> List[str]:
        return [kind for kind, _ in self.events]

    def _record(self, kind: str) -> None:
        self.events.append((kind, _caller()))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        flat, _ = tree_flatten((args, kwargs))
        src = args[0] if args else None
        if func in (torch.Tensor.to, torch.Tensor.cpu):
            return self._to(func, src, args[1:], kwargs)
        if func in _SYNCS and isinstance(src, OnDevice):
            self._record(f"D2H:{_SYNCS[func]}")
            plain = [_plain(a) for a in args]
            return func(*plain, **kwargs)
        if _is_fake(kwargs.get("device")):  # a factory on the device
            data = args[0] if args else kwargs.get("data")
            if func in _FROM_HOST_DATA and not isinstance(data, OnDevice):
                self._record("H2D")
            kwargs["device"] = "cpu"
            out = func(*[_plain(a) for a in args], **kwargs)
            return on_device(out) if isinstance(out, torch.Tensor) else out
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and isinstance(
            src, OnDevice
        ):
            index, _ = tree_flatten(args[1])
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                self._record("D2H:bool index")
        devices = [a for a in flat if isinstance(a, OnDevice)]
        hosts = [
            a
            for a in flat
            if isinstance(a, torch.Tensor)
            and not isinstance(a, OnDevice)
            and a.dim() > 0
        ]
        if devices and hosts:
            self._record(f"mixed:{getattr(func, '__name__', func)}")
        return func(*args, **kwargs)

    def _to(self, func, src, rest, kwargs):
        target = kwargs.pop("device", None)
        others = []
        for a in rest:
            if isinstance(a, (str, torch.device)):
                target = a
            elif isinstance(a, torch.Tensor):  # .to(other): its device and dtype
                target = a.device
                kwargs.setdefault("dtype", a.dtype)
            else:
                others.append(a)
        if func is torch.Tensor.cpu:
            target = "cpu"
        kwargs.pop("non_blocking", None)
        plain = _plain(src).to(*others, **kwargs)
        if isinstance(src, OnDevice):
            if _is_host_cpu(target):
                self._record("D2H:cpu")
                return plain
            return on_device(plain)
        if _is_fake(target):
            self._record("H2D")
            return on_device(plain)
        return plain
