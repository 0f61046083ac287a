"""Tensors derived from a module's parameters (a merged or folded kernel, A = -exp(A_log)), kept between calls while
the parameters are unchanged."""
import weakref
from typing import Callable, Dict

import torch
from torch import nn

_DERIVED: "weakref.WeakKeyDictionary[nn.Module, Dict[str, tuple]]" = weakref.WeakKeyDictionary()


@torch.jit.unused
def derived(module: nn.Module, name: str, build: Callable[[], tuple], *sources: torch.Tensor) -> tuple:
    """build(): tensors computed from the parameters / buffers `sources` (a merged or folded kernel). Where no autograd
    graph is recorded (no_grad / inference_mode, eager) the result is kept per module and reused while every source
    keeps its storage, device, dtype, shape and version counter, which in-place updates (optimizer steps,
    load_state_dict, `p[...] = ...` under no_grad) advance and `.to()` replaces: an eval forward then skips a dozen
    small ops per block. (Writes through `p.data` bypass the version counter, as they bypass autograd.) Training,
    compiled and traced (torch.jit.trace, torch.fx) graphs build every time."""
    if (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or any(isinstance(t, torch.fx.Proxy) or t.is_inference() for t in sources)):
        return build()
    key = tuple((t.data_ptr(), t.device, t.dtype, t.shape, t._version) for t in sources)
    cache = _DERIVED.setdefault(module, {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, build())
    return hit[1]
