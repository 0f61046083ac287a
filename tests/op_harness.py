"""The test harness shared by every op: backend vs float64 reference (forward and every gradient), backend skips, and
the Triton interpreter run in subprocess shards.

Triton builds interpreted kernels only when TRITON_INTERPRET=1 is set before a kernel module is imported, so each
op's Triton test file calls `run_file_under_triton_interpreter(__file__)` from an ordinary run: it re-runs the file in
subprocess shards (VISION2D_TRITON_TEST_SHARD=i/n) with the variable set, where the kernel cases run in-process and
each shard takes `shard(cases)` of them.
"""
import os
import subprocess
import sys
from typing import Callable, Optional, Sequence

import pytest
import torch

# absolute (times the reference's largest magnitude) / relative tolerance per input dtype; states are fp32 for every
# dtype but fp64, and half inputs round at load and store
TOLERANCES = {torch.float64: (1e-10, 1e-9), torch.float32: (2e-5, 2e-4), torch.bfloat16: (3e-2, 3e-2),
              torch.float16: (5e-3, 5e-3)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
SHARD, NUM_SHARDS = map(int, os.environ.get("VISION2D_TRITON_TEST_SHARD", "0/1").split("/"))


def shard(cases: Sequence) -> list:
    """This process's share of a list of cases (all of them outside the interpreter shards)."""
    return list(cases)[SHARD::NUM_SHARDS]


def require_backend(backends, name: str, device="cpu"):
    """Skip the test when backend `name` of an op (`backends.OpBackends`) cannot run on `device`."""
    reason = backends.unavailable_reason(name, torch.device(device))
    if reason is not None:
        pytest.skip(f"{backends.op_name} backend {name} unavailable on {device}: {reason}")


def _leaves(args, device, dtype=None):
    """args on `device`: floating-point tensors as fresh leaves that require grad (in `dtype` if given), other
    tensors (index maps) moved as they are."""
    return [(a.to(device, dtype or a.dtype).detach().requires_grad_() if a.is_floating_point() else a.to(device))
            if isinstance(a, torch.Tensor) else a for a in args]


def assert_matches_reference(op: Callable, reference: Callable, args: Sequence, names: Sequence[str],
                             dtype: torch.dtype, backend: str, device="cpu", seed: int = 1, **kwargs):
    """`op(*args, backend=backend, **kwargs)` on `device` against `reference(*args_in_float64_on_cpu, **kwargs)`:
    the output and the gradient of every floating-point tensor argument (named by `names`, in order), for one fixed
    upstream gradient rounded to `dtype` the same way for both."""
    leaves = _leaves(args, device)
    ref_leaves = _leaves(args, "cpu", torch.float64)
    y = op(*leaves, backend=backend, **kwargs)
    assert y.dtype == dtype and y.device.type == torch.device(device).type, (y.dtype, y.device)
    y_ref = reference(*ref_leaves, **kwargs)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(y.cpu().double(), y_ref, atol=atol * (y_ref.abs().max().item() + 1e-6), rtol=rtol)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    differentiable = [(n, a, r) for n, a, r in zip(names, leaves, ref_leaves) if isinstance(a, torch.Tensor)
                      and a.requires_grad]
    grads = torch.autograd.grad(y, [a for _, a, _ in differentiable], dy.to(device), allow_unused=True)
    ref_grads = torch.autograd.grad(y_ref, [r for _, _, r in differentiable], dy.double(), allow_unused=True)
    for (name, leaf, _), g, r in zip(differentiable, grads, ref_grads):
        if r is None:
            assert g is None or not g.any(), f"grad of {name} should be zero"
            continue
        assert g is not None, f"no grad for {name}"
        assert g.dtype == leaf.dtype, f"grad of {name} has dtype {g.dtype}, input {leaf.dtype}"
        assert torch.isfinite(g).all(), f"grad of {name} is not finite"
        torch.testing.assert_close(g.cpu().double(), r, atol=atol * (r.abs().max().item() + 1e-6), rtol=rtol,
                                   msg=lambda m: f"grad of {name}: {m}")


def triton_cpu_reason(backends) -> Optional[str]:
    """Why an op's Triton backend cannot run on CPU tensors in this process (None under the interpreter)."""
    return backends.unavailable_reason("triton", torch.device("cpu"))


def triton_importable(backends) -> bool:
    reason = triton_cpu_reason(backends)
    return reason is None or "not importable" not in reason


def run_file_under_triton_interpreter(test_file: str, num_shards: int = 2, timeout: float = 900):
    """Run the pytest file `test_file` in `num_shards` concurrent subprocesses with TRITON_INTERPRET=1; fail with the
    output of any shard that fails or runs nothing."""
    cmd = [sys.executable, "-m", "pytest", os.path.abspath(test_file), "-q", "-x", "-rs", "-p", "no:cacheprovider"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shards = [subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, TRITON_INTERPRET="1",
                                        VISION2D_TRITON_TEST_SHARD=f"{i}/{num_shards}"))
              for i in range(num_shards)]
    for i, process in enumerate(shards):
        output, _ = process.communicate(timeout=timeout)
        assert process.returncode == 0, f"shard {i}/{num_shards} of {' '.join(cmd)} failed " \
                                        f"(exit {process.returncode}):\n{output[-8000:]}"
        assert " passed" in output and "TRITON_INTERPRET=1 subprocess" not in output, output[-3000:]
