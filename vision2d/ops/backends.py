"""Backend choice for every op, written once.

Each op has backend modules with the same interface (`unavailable_reason(device) -> Optional[str]`,
`forward(...)`, `backward(...)`, the op's arguments in the op's order):
    "reference"  pure PyTorch, any device (the math; the fallback)
    "cpu"        compiled C++/OpenMP kernel from `kernels/cpu/` (CPU tensors)
    "triton"     Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1)
An op picks one with its `backend=` argument, else the environment variable VISION2D_SCAN_BACKEND (for every op that
has that backend; an op without it, such as `depthwise_conv2d` without "triton", takes "auto"), else "auto": the
fastest backend the tensor's device has, with a warning (once per message) when it has to fall back
to the slow reference. `OpBackends.resolve(device)` reports the choice; an explicitly requested backend that cannot run
raises with the reason.
"""
import importlib
import os
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from torch.autograd import forward_ad
from torch.utils._python_dispatch import _get_current_dispatch_mode

ENV_VAR = "VISION2D_SCAN_BACKEND"
AUTO = "auto"
BACKEND_KINDS = ("reference", "cpu", "triton")
_PREFERRED = {"cuda": "triton", "cpu": "cpu"}  # device type -> fastest backend kind
_warned = set()
_generation = [0]  # advanced by `forget_resolutions`


def forget_resolutions():
    """Make every op resolve its backend anew (after a native library was reset, so its availability may differ)."""
    _generation[0] += 1


def _warn_once(message: str):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


class OpBackends:
    """The backends of one op: `modules` maps a backend name to its module's import path."""

    def __init__(self, op_name: str, modules: Dict[str, str]):
        if "reference" not in modules:
            raise ValueError(f"{op_name}: every op needs a 'reference' backend")
        self.op_name = op_name
        self.modules = dict(modules)
        self.names = tuple(modules)
        self._resolved: Dict[tuple, str] = {}
        self._generation = _generation[0]
        self._loaded = {}  # backend name -> its imported module

    def check_name(self, backend: Optional[str]) -> str:
        """`backend` (None means "auto") if it names a backend of this op or "auto"; else a ValueError."""
        backend = AUTO if backend is None else backend
        if backend != AUTO and backend not in self.modules:
            raise ValueError(f"{self.op_name}: unknown scan backend {backend!r}; expected one of {self.names} or 'auto'")
        return backend

    def module(self, name: str):
        loaded = self._loaded.get(name)
        if loaded is None:
            loaded = self._loaded[name] = importlib.import_module(self.modules[self.check_name(name)])
        return loaded

    def unavailable_reason(self, name: str, device) -> Optional[str]:
        """None when backend `name` can run on `device`, else why not."""
        self.check_name(name)
        try:
            module = importlib.import_module(self.modules[name])
        except ImportError as e:
            return f"cannot import {self.modules[name]}: {e}"
        return module.unavailable_reason(torch.device(device))

    def resolve(self, device, backend: Optional[str] = None) -> str:
        """The backend that runs this op on `device`: `backend`, else $VISION2D_SCAN_BACKEND, else the fastest. The
        choice is kept per (device type, backend, variable) until `forget_resolutions` (which a native library's
        reset calls): ops resolve on every call."""
        device = torch.device(device)
        key = (device.type, backend, os.environ.get(ENV_VAR))
        if self._generation != _generation[0]:
            self._resolved, self._generation = {}, _generation[0]
        chosen = self._resolved.get(key)
        if chosen is None:
            chosen = self._resolved[key] = self._resolve(device, backend)
        return chosen

    def _resolve(self, device: torch.device, backend: Optional[str]) -> str:
        requested = self.check_name(backend)
        if requested == AUTO:
            from_env = os.environ.get(ENV_VAR) or AUTO
            if from_env != AUTO and from_env not in BACKEND_KINDS:
                raise ValueError(f"${ENV_VAR}={from_env!r} names no backend; expected one of {BACKEND_KINDS} or 'auto'")
            requested = from_env if from_env in self.modules else AUTO
        if requested != AUTO:
            reason = self.unavailable_reason(requested, device)
            if reason is not None:
                raise RuntimeError(f"{self.op_name}: backend {requested!r} cannot run on {device.type}: {reason}")
            return requested
        preferred = _PREFERRED.get(device.type)
        if preferred is None or preferred not in self.modules:
            return "reference"
        reason = self.unavailable_reason(preferred, device)
        if reason is None:
            return preferred
        _warn_once(f"vision2d: the {preferred!r} backend of {self.op_name} is unavailable on {device.type} "
                   f"({reason}); falling back to the slow 'reference' backend")
        return "reference"

    def forward(self, backend: str, *args):
        """Run the chosen backend's forward; args[0] is a tensor on the op's device."""
        return self.module(self.resolve(args[0].device, backend)).forward(*args)

    def backward(self, backend: str, *args):
        return self.module(self.resolve(args[0].device, backend)).backward(*args)


def custom_op(name: str):
    """Decorator: `torch.library.custom_op(name, mutates_args=())` that keeps the function as the op's
    `implementation`, which `call_op` runs directly where the dispatcher has nothing to add."""
    def wrap(function):
        op = torch.library.custom_op(name, function, mutates_args=())
        op.implementation = function
        return op
    return wrap


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def unobserved(*args) -> bool:
    """True where nothing observes a call with `args` but the call itself: no autograd graph to record (no tensor
    requires grad, or grad mode is off), no compile, trace, export, forward-mode AD level, functorch transform or
    dispatch mode, plain tensors on a real device (None and non-tensors pass)."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or _get_current_dispatch_mode() is not None
            or forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()):
        return False
    grad = torch.is_grad_enabled()
    for a in args:  # a loop and `is_meta`: 4.8 us for a selective_scan's 13 arguments, 8.3 as a generator of devices
        if isinstance(a, torch.Tensor) and (type(a) not in _PLAIN_TENSORS or a.is_meta or (grad and a.requires_grad)):
            return False
    return True


def call_op(op, *args):
    """`op(*args)` (a custom op made by `custom_op`), or `op.implementation(*args)`, the function itself, where the
    dispatcher has nothing to add (`unobserved`). The result is the same; what is skipped is the custom op's Python
    layers, which cost 0.1-0.3 ms per call once a forward's matrix products have flushed the caches (1 thread, one
    depthwise conv of a 14x14x256 map: 307 vs 104 us for the bare kernel), a few percent of a batch-1 forward with
    dozens of calls. Profiles of such calls show the backend's ATen ops, not the custom op's row."""
    return op.implementation(*args) if unobserved(*args) else op(*args)


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensors(op_name: str, tensors: Dict[str, Optional[torch.Tensor]], required: Sequence[str] = (),
                  any_dtype: Sequence[str] = ()):
    """Raises a TypeError / ValueError naming the bad argument of `op_name`: each of `tensors` (None allowed unless its
    name is in `required`) must be a torch.Tensor of a float dtype (any dtype for names in `any_dtype`, which the op
    checks itself) on the device of the first one."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if t is None and name not in required:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op_name}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if name not in any_dtype and t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op_name}: {name} has dtype {t.dtype}; expected one of {FLOAT_DTYPES}")
        if t.device != first.device:
            raise ValueError(f"{op_name}: {name} is on {t.device} but {first_name} is on {first.device}")


def backward_op_grads(grads: Sequence[Optional[torch.Tensor]], like: torch.Tensor) -> List[torch.Tensor]:
    """What a backward custom op returns for `grads`: each gradient contiguous, as `backward_op_fake` promises
    (Inductor checks the strides a custom op returns), and an absent one (a custom op cannot return None) as an empty
    tensor like `like` that autograd drops."""
    return [like.new_empty(0) if g is None else g.contiguous() for g in grads]


def backward_op_fake(inputs: Sequence[Optional[torch.Tensor]], like: torch.Tensor) -> List[torch.Tensor]:
    """The fake of a backward custom op: a contiguous gradient shaped as each of `inputs`, `backward_op_grads`'s empty
    placeholder for an absent one."""
    return [like.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
            for t in inputs]
