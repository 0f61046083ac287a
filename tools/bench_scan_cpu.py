"""Time the 2D selective scan on CPU: forward and forward+backward per backend at Mamba2D stage shapes.

    python tools/bench_scan_cpu.py [--threads 2] [--backends cpu reference] [--shapes 1x56x56x64x16 1x28x28x128x16]

Prints a markdown table for docs/benchmarks.md: milliseconds over --repeats runs after warm-up, as "min / median"
(on a shared machine the minimum is the better estimate of the unloaded time).
"""
import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from scan2d_cases import make_scan_inputs  # noqa: E402
from vision2d.ops import selective_scan_2d  # noqa: E402

# Mamba2D-T: 3 scans at stage 0 (56 x 56, E = 64) and 3 at stage 1 (28 x 28, E = 128) for a 224 x 224 image
DEFAULT_SHAPES = ("1x56x56x64x16", "1x28x28x128x16")


def time_ms(fn, repeats: int, warmup: int = 2) -> str:
    """"min / median" milliseconds of `fn` over `repeats` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return f"{min(times):.2f} / {statistics.median(times):.2f}"


def time_scan(backend: str, shape, dtype: torch.dtype, repeats: int):
    """(forward, forward+backward) timings of one scan of `shape` = (B, H, W, E, N), reverse=False."""
    args = make_scan_inputs(*shape, dtype=dtype)
    leaves = [a.detach().requires_grad_() for a in args]
    dy = torch.randn(shape[:4], dtype=dtype)

    def fwd():
        with torch.no_grad():
            selective_scan_2d(*args, backend=backend)

    def fwd_bwd():
        y = selective_scan_2d(*leaves, backend=backend)
        torch.autograd.grad(y, leaves, dy)

    return time_ms(fwd, repeats), time_ms(fwd_bwd, max(1, repeats // 2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--backends", nargs="+", default=["cpu", "reference"])
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), help="BxHxWxExN")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--repeats", type=int, default=20)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    dtype = getattr(torch, opts.dtype)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"{cpu}, {opts.threads} threads, torch {torch.__version__}, {opts.dtype}\n")
    print("| backend | B x H x W x E x N | forward ms (min / median) | forward+backward ms (min / median) |")
    print("|---|---|---|---|")
    for backend in opts.backends:
        for text in opts.shapes:
            shape = tuple(int(x) for x in text.split("x"))
            repeats = opts.repeats if backend != "reference" else max(2, opts.repeats // 10)
            fwd, fwd_bwd = time_scan(backend, shape, dtype, repeats)
            print(f"| {backend} | {text} | {fwd} | {fwd_bwd} |", flush=True)


if __name__ == "__main__":
    main()
