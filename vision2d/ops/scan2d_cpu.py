"""The "cpu" backend of `selective_scan_2d`: the C++/OpenMP kernel `kernels/cpu/scan2d_cpu.cpp`, loaded with ctypes.

The kernel is compiled with the system C++ compiler ($CXX, else g++) on first use in a process, into a per-user cache
directory ($VISION2D_KERNEL_CACHE, else $XDG_CACHE_HOME/vision2d or ~/.cache/vision2d) under a name hashed from the
source, the flags, the compiler and the CPU, so later processes load it in milliseconds. It needs no torch headers.
Half-precision inputs are widened to float32 here (the kernel's state type), and outputs cast back.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch

from .scan2d_ref import state_dtype

SOURCE = Path(__file__).resolve().parents[2] / "kernels" / "cpu" / "scan2d_cpu.cpp"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC")
# per thread: the backward recomputes all of a channel block's states when they fit, else segments of rows restarted
# from checkpointed rows (one more forward pass)
STATE_BUDGET_BYTES = 16 << 20

_lock = threading.Lock()
_library: Optional[ctypes.CDLL] = None
_failure: Optional[str] = None


def _cpu_description() -> str:
    """CPU model and feature flags (what -march=native compiles for)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("VISION2D_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vision2d")
    return Path(root)


def _build(compiler: str) -> Path:
    """Compile SOURCE (once per source/flags/compiler/CPU) and return the shared library's path."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, version, _cpu_description()]).encode()).hexdigest()
    target = _cache_dir() / f"scan2d_cpu-{key[:16]}.so"
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # build under a unique name, then rename: concurrent processes never load a half-written library
        fd, tmp = tempfile.mkstemp(prefix=target.stem + "-", suffix=".tmp.so", dir=target.parent)
    except OSError as e:
        raise RuntimeError(f"cannot write the kernel cache {target.parent} ({e}); set $VISION2D_KERNEL_CACHE") from e
    os.close(fd)
    try:
        result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if result.returncode != 0:
            head = "\n".join((result.stderr or result.stdout).strip().splitlines()[:8])
            raise RuntimeError(f"{compiler} failed to build {SOURCE} (exit {result.returncode}):\n{head}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _declare(lib: ctypes.CDLL):
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        forward = getattr(lib, f"scan2d_forward_{suffix}")
        forward.argtypes = [ptr] * 10 + [i64] * 5 + [i32] * 3
        forward.restype = i32
        backward = getattr(lib, f"scan2d_backward_{suffix}")
        backward.argtypes = [ptr] * 19 + [i64] * 5 + [i32] * 2 + [i64, i32]
        backward.restype = i32


def _load() -> ctypes.CDLL:
    """The compiled kernel library; builds it on first call. Raises RuntimeError with the reason on failure."""
    global _library, _failure
    with _lock:
        if _library is None and _failure is None:
            try:
                if not SOURCE.is_file():
                    raise RuntimeError(f"kernel source {SOURCE} not found: the cpu backend needs a repository "
                                       "checkout (pip install -e <repo>) that has kernels/cpu/")
                compiler = shutil.which(os.environ.get("CXX", "g++"))
                if compiler is None:
                    raise RuntimeError(f"C++ compiler {os.environ.get('CXX', 'g++')!r} not found (set $CXX)")
                lib = ctypes.CDLL(str(_build(compiler)))
                _declare(lib)
                _library = lib
            except (RuntimeError, OSError) as e:
                _failure = str(e)
        if _library is None:
            raise RuntimeError(_failure)
        return _library


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the kernel can run on `device` (CPU tensors; builds the kernel on first call), else why not."""
    if device.type != "cpu":
        return f"the cpu backend runs on CPU tensors only, not {device.type}"
    try:
        _load()
    except RuntimeError as e:
        return str(e)
    return None


def _pointer(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _call(name: str, dtype: torch.dtype, *args):
    kernel = getattr(_load(), f"{name}_{'f64' if dtype == torch.float64 else 'f32'}")
    if kernel(*args) != 0:
        raise MemoryError(f"{name}: could not allocate the kernel's scratch memory")


def forward(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_softplus, reverse):
    """y (B, H, W, E) in u's dtype; inputs contiguous and channels-last as in `scan2d_ref`."""
    sd = state_dtype(u.dtype)
    inputs = [t.to(sd).contiguous() for t in (u, delta_t, delta_l, A_t, A_l, B_t, B_l, C)]
    d = None if D is None else D.to(sd).contiguous()
    y = torch.empty(u.shape, dtype=sd)
    if y.numel() > 0:
        _call("scan2d_forward", sd, *map(_pointer, inputs), _pointer(d), y.data_ptr(), *u.shape, A_t.shape[1],
              int(delta_softplus), int(reverse), torch.get_num_threads())
    return y.to(u.dtype)


def backward(dy, u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_softplus, reverse):
    """(du, ddelta_t, ddelta_l, dA_t, dA_l, dB_t, dB_l, dC, dD), each in its input's dtype (dD None without D)."""
    sd = state_dtype(u.dtype)
    inputs = [t.to(sd).contiguous() for t in (dy, u, delta_t, delta_l, A_t, A_l, B_t, B_l, C)]
    d = None if D is None else D.to(sd).contiguous()
    alloc = torch.empty if u.numel() > 0 else torch.zeros  # the kernel writes every element
    grads = [alloc(t.shape, dtype=sd) for t in (u, delta_t, delta_l, A_t, A_l, B_t, B_l, C)]
    dd = None if D is None else alloc(D.shape, dtype=sd)
    if u.numel() > 0:
        _call("scan2d_backward", sd, *map(_pointer, inputs), _pointer(d), *map(_pointer, grads), _pointer(dd),
              *u.shape, A_t.shape[1], int(delta_softplus), int(reverse), STATE_BUDGET_BYTES, torch.get_num_threads())
    outs = [g.to(t.dtype) for g, t in zip(grads, (u, delta_t, delta_l, A_t, A_l, B_t, B_l, C))]
    return (*outs, None if D is None else dd.to(D.dtype))
