"""A wheel built from the repository is a working install: it carries the native kernel sources, and, installed into a
fresh virtual environment outside the checkout, it runs the compiled CPU kernel (not the reference fallback) with
results equal to the reference.

The environment reaches torch, timm and the other dependencies through a plain path entry to this interpreter's
site-packages (no .pth processing there, so this checkout's editable install is invisible to it); the wheel itself is
installed with pip, offline, without dependencies.
"""
import os
import site
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(out), str(REPO)], check=True, capture_output=True, text=True, timeout=600)
    [path] = out.glob("vision2d-*.whl")
    return path


def test_wheel_carries_every_kernel_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = [p.relative_to(REPO / "kernels") for p in (REPO / "kernels").rglob("*") if p.suffix in (".cpp", ".h")]
    assert sources
    for source in sources:
        assert f"vision2d/_kernels/{source.as_posix()}" in names


def test_installed_wheel_runs_the_compiled_kernel(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    Path(env_site, "host-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # --ignore-installed: the host's site-packages (reachable through the path entry) may list a vision2d already
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300, env=clean_env)
    check = textwrap.dedent("""
        import torch, vision2d
        from vision2d.ops import resolve_backend, selective_scan_2d, selective_scan_2d_ref
        print("FILE", vision2d.__file__)
        print("BACKEND", resolve_backend("cpu"))
        g = torch.Generator().manual_seed(0)
        B, H, W, E, N = 2, 5, 7, 8, 4
        u, dt, dl = (torch.randn(B, H, W, E, generator=g) for _ in range(3))
        bt, bl, c = (torch.randn(B, H, W, N, generator=g) for _ in range(3))
        a_t, a_l = (-torch.rand(E, N, generator=g) - 0.5 for _ in range(2))
        d = torch.randn(E, generator=g)
        args = (u, dt, dl, a_t, a_l, bt, bl, c, d)
        y = selective_scan_2d(*args, backend="cpu")
        ref = selective_scan_2d_ref(*(t.double() for t in args))
        print("ERROR", ((y.double() - ref).abs().max() / ref.abs().max()).item())
    """)
    result = subprocess.run([python, "-c", check], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                            env=clean_env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert Path(lines["FILE"]).resolve().is_relative_to(env_dir.resolve())  # the wheel, not this checkout
    assert lines["BACKEND"] == "cpu"
    assert float(lines["ERROR"]) < 1e-5
