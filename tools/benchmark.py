"""Benchmark timm models side by side, or the backends of a scan op, in one run (ratios are only fair within a run).

    python tools/benchmark.py [MODEL ...]            # default: mamba2d_tiny convnext_tiny
    python tools/benchmark.py --op                    # every 2D scan backend vs the reference, Mamba2D-T stage shapes
    python tools/benchmark.py --op selective_scan     # every selective-scan backend, VMamba-T cross-scan stage shapes
    python tools/benchmark.py ... --write docs/benchmarks.md   # append the table with device, versions and command

Models: eval latency (batch --latency-batch), eval throughput (batch --batch-size) and train step throughput, measured
round-robin (model A, model B, A, B, ...) and reported as medians so machine noise hits every model alike (the
latency of a round is the median of --latency-calls back-to-back calls: steady state, warm caches; --latency-only
times nothing else, so no batch eval or train step runs between two models' latency calls). The latency ratio to the
last model is the median over rounds of the ratio within a round (a shared machine's speed drifts between rounds more
than within one), with the lowest and highest round's ratio beside it. Peak memory
is how far the resident set of a fresh process rises above its size after the imports while it builds the model and
runs one eval and one train step (CPU, Linux), or torch.cuda.max_memory_allocated (CUDA).
"""
import argparse
import datetime
import multiprocessing as mp
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import vision2d  # noqa: E402,F401  (registers the models)
from vision2d.checkpoint import check_model_name  # noqa: E402
from vision2d.ops import BACKENDS, backend_unavailable_reason, resolve_backend, selective_scan_2d  # noqa: E402
from vision2d.ops import cross_scan_orders, selective_scan  # noqa: E402
from vision2d.ops.selective_scan import SELECTIVE_SCAN_BACKENDS  # noqa: E402

# Mamba2D-T at 224x224: three scans at stage 0 (56x56, E=64) and three at stage 1 (28x28, E=128)
OP_SHAPES = ("1x56x56x64x16", "1x28x28x128x16", "8x56x56x64x16")
# VMamba-T at 224x224: one scan of K = 4 cross-scan directions per block at each stage (d_state 1)
SELECTIVE_SCAN_SHAPES = ("1x56x56x96x1", "1x28x28x192x1", "1x14x14x384x1", "1x7x7x768x1")


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_once(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def progress(message: str):
    """One line of progress on stderr (the report itself goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _round_robin(tasks: dict, rounds: int, warmup: int, device, calls: dict = None) -> dict:
    """Seconds of each task in each round (a list per task), timing the tasks in turn for `rounds` rounds after
    `warmup` calls each.

    In a round, task `name` runs `calls.get(name, 1)` times back to back and counts with the median of those calls.
    """
    calls = calls or {}
    for name, fn in tasks.items():
        progress(f"warm-up: {warmup} call(s) of {name}")
        for _ in range(warmup):
            fn()
    times = {name: [] for name in tasks}
    for round_index in range(rounds):
        start = time.perf_counter()
        for name, fn in tasks.items():
            times[name].append(statistics.median(_time_once(fn, device) for _ in range(calls.get(name, 1))))
        progress(f"round {round_index + 1}/{rounds} ({time.perf_counter() - start:.1f} s)")
    return times


def _medians(times: dict) -> dict:
    return {name: statistics.median(t) for name, t in times.items()}


def round_ratios(times: list, reference_times: list) -> list:
    """Each round's time over the reference's time in the same round."""
    return [t / r for t, r in zip(times, reference_times, strict=True)]


def _make_model_tasks(name, args, device):
    model = timm.create_model(name, num_classes=1000).to(device)
    size = args.img_size
    x_lat = torch.randn(args.latency_batch, 3, size, size, device=device)
    x_thr = torch.randn(args.batch_size, 3, size, size, device=device)
    target = torch.randint(0, 1000, (args.batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def infer(x):
        model.eval()
        with torch.inference_mode():
            model(x)

    def train_step():
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x_thr), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    params = sum(p.numel() for p in model.parameters()) / 1e6
    return params, {"latency": lambda: infer(x_lat), "eval": lambda: infer(x_thr), "train": train_step}


def _rss_high_water_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def _peak_memory_child(name, args, queue):
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS (after the imports)
    base = _rss_high_water_mib()
    _, tasks = _make_model_tasks(name, args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tasks["eval"]()
    tasks["train"]()
    if device.type == "cuda":
        queue.put(torch.cuda.max_memory_allocated() / 2**20)
    else:
        queue.put(_rss_high_water_mib() - base)


def peak_memory_mib(name, args) -> float:
    """Peak memory (MiB) of building `name` and running one eval and one train step, in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_memory_child, args=(name, args, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"memory measurement of {name} failed (exit code {proc.exitcode})")
    return queue.get()


def bench_models(args) -> str:
    device = torch.device(args.device)
    for name in args.models:
        try:
            check_model_name(name)
        except ValueError as error:
            raise SystemExit(f"error: {error}")
    params, tasks = {}, {}
    kinds = ("latency",) if args.latency_only else ("latency", "eval", "train")
    for name in args.models:
        progress(f"building {name}")
        params[name], model_tasks = _make_model_tasks(name, args, device)
        tasks.update({(name, kind): fn for kind, fn in model_tasks.items() if kind in kinds})
    latency_calls = {(name, "latency"): args.latency_calls for name in args.models}
    times = _round_robin(tasks, args.rounds, args.warmup, device, latency_calls)
    medians = _medians(times)
    memory = {}
    if not args.no_memory:
        for name in args.models:
            progress(f"peak memory of {name} (a fresh process)")
            memory[name] = peak_memory_mib(name, args)
    ref = args.models[-1]
    columns = ["model", "params (M)", f"latency b={args.latency_batch} (ms)", "ratio", "ratio range"]
    columns += [] if args.latency_only else [f"eval img/s b={args.batch_size}", f"train img/s b={args.batch_size}"]
    columns += ["peak mem (MiB)"] if memory else []  # only what was measured
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name in args.models:
        ratios = round_ratios(times[(name, "latency")], times[(ref, "latency")])
        cells = [name, f"{params[name]:.1f}", f"{medians[(name, 'latency')] * 1e3:.1f}",
                 f"{statistics.median(ratios):.2f}x", f"{min(ratios):.2f}-{max(ratios):.2f}"]
        if not args.latency_only:
            cells += [f"{args.batch_size / medians[(name, kind)]:.1f}" for kind in ("eval", "train")]
        cells += [f"{memory[name]:.0f}"] if memory else []
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nScan backend on {device.type}: `{resolve_backend(device)}`; medians of {args.rounds} round-robin "
                 f"rounds after {args.warmup} warm-up calls; in each round the latency is the median of "
                 f"{args.latency_calls} back-to-back calls; ratio = the median over rounds of a round's latency / "
                 f"`{ref}`'s latency in that round, ratio range = the lowest and highest of those.")
    return "\n".join(lines)


def bench_op(args) -> str:
    from scan2d_cases import make_scan_inputs

    device = torch.device(args.device)
    backends = [b for b in BACKENDS if backend_unavailable_reason(b, device) is None]
    rows = ["| shape B x H x W x E x N | dtype | backend | forward (ms) | fwd+bwd (ms) | fwd speed-up vs reference |",
            "|---|---|---|---|---|---|"]
    for shape_text in args.shapes or OP_SHAPES:
        progress(f"scan shape {shape_text}, backends {', '.join(backends)}")
        shape = tuple(int(v) for v in shape_text.split("x"))
        args_fp = make_scan_inputs(*shape, dtype=getattr(torch, args.dtype), device=device)
        leaves = [a.detach().requires_grad_() for a in args_fp]
        dy = torch.randn(shape[:4], device=device, dtype=args_fp[0].dtype)
        rows += _backend_rows(shape_text, backends,
                              lambda tensors, backend: selective_scan_2d(*tensors, backend=backend),
                              args_fp, leaves, dy, args, device)
    return "\n".join(rows)


def bench_selective_scan(args) -> str:
    """The selective-scan backends on VMamba cross-scans: K = 4 directions merged, shapes BxHxWxExN."""
    from selective_scan_cases import make_inputs

    device = torch.device(args.device)
    backends = [b for b in SELECTIVE_SCAN_BACKENDS.names
                if SELECTIVE_SCAN_BACKENDS.unavailable_reason(b, device) is None]
    rows = ["| shape B x H x W x E x N, K = 4 | dtype | backend | forward (ms) | fwd+bwd (ms) | "
            "fwd speed-up vs reference |", "|---|---|---|---|---|---|"]
    for shape_text in args.shapes or SELECTIVE_SCAN_SHAPES:
        batch, H, W, E, N = (int(v) for v in shape_text.split("x"))
        inputs = make_inputs(batch, H * W, 4, E, N, dtype=getattr(torch, args.dtype), device=device)
        leaves = [a.detach().requires_grad_() for a in inputs]
        order = cross_scan_orders(H, W, device=device)
        dy = torch.randn(batch, H * W, E, device=device, dtype=inputs[0].dtype)

        def call(tensors, backend, order=order):
            return selective_scan(*tensors, delta_softplus=True, order=order, backend=backend)
        rows += _backend_rows(shape_text, backends, call, inputs, leaves, dy, args, device)
    return "\n".join(rows)


def _backend_rows(label, backends, call, inputs, leaves, dy, args, device) -> list:
    """Table rows of the median forward and forward+backward times of every backend; `call(tensors, backend)` runs
    the op."""
    tasks = {}
    for backend in backends:
        def fwd(backend=backend):
            with torch.no_grad():
                call(inputs, backend)

        def fwd_bwd(backend=backend):
            torch.autograd.grad(call(leaves, backend), leaves, dy)
        tasks[(backend, "fwd")] = fwd
        tasks[(backend, "fwd_bwd")] = fwd_bwd
    medians = _medians(_round_robin(tasks, args.rounds, 1, device))
    rows = []
    for backend in backends:
        speedup = medians[("reference", "fwd")] / medians[(backend, "fwd")]
        rows.append(f"| {label} | {args.dtype} | {backend} | {medians[(backend, 'fwd')] * 1e3:.2f} | "
                    f"{medians[(backend, 'fwd_bwd')] * 1e3:.2f} | {speedup:.1f}x |")
    return rows


def describe_machine(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
            else platform.processor()
    return (f"device: {name} ({device.type}, {threads} threads); python {platform.python_version()}, "
            f"torch {torch.__version__}, timm {timm.__version__}, vision2d {vision2d.__version__}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help, and the module docstring as written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("models", nargs="*", default=["mamba2d_tiny", "convnext_tiny"],
                        help="timm models to compare; the last one is the reference of the latency ratio")
    parser.add_argument("--op", nargs="?", const="selective_scan_2d", default=None,
                        choices=["selective_scan_2d", "selective_scan"],
                        help="benchmark the backends of this scan op instead of models")
    parser.add_argument("--shapes", nargs="+", default=None,
                        help=f"--op shapes, BxHxWxExN (default: {' '.join(OP_SHAPES)} for selective_scan_2d, "
                             f"{' '.join(SELECTIVE_SCAN_SHAPES)} for selective_scan)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="--op input dtype")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to run on")
    parser.add_argument("--img-size", type=int, default=224, help="square input size of the model benchmark")
    parser.add_argument("--latency-batch", type=int, default=1, help="batch size of the latency measurement")
    parser.add_argument("--latency-calls", type=int, default=3,
                        help="back-to-back latency calls per model and round (their median counts): steady-state "
                             "latency, not the first call after another model's work")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size of the eval and train throughput")
    parser.add_argument("--latency-only", action="store_true",
                        help="time only the latency: the rounds then alternate the models' latency calls alone, "
                             "without the batch eval and train steps (and their cache and allocator churn) between "
                             "them, and take a fraction of the time")
    parser.add_argument("--rounds", type=int, default=10, help="timed round-robin rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each task before timing")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory processes (the table then has no memory column)")
    parser.add_argument("--write", type=Path, default=None,
                        help="append the result (with device, versions, command) to this markdown file")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    benches = {None: bench_models, "selective_scan_2d": bench_op, "selective_scan": bench_selective_scan}
    table = benches[args.op](args)
    header = (f"### {f'{args.op} backends' if args.op else 'Models'}, {datetime.date.today().isoformat()}\n\n"
              f"{describe_machine(torch.device(args.device), args.threads)}\n\n"
              f"Command: `python tools/benchmark.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    report = f"{header}\n{table}\n"
    print(report)
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + report)


if __name__ == "__main__":
    main()
