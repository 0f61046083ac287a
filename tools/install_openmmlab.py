"""Install the OpenMMLab stack used by ``vision2d.mm``: mmcv 2.1.0 with compiled ops, mmengine, mmdet and mmseg.

mmdet 3.3.0 and mmseg 1.2.2 need mmcv >=2.0.0rc4,<2.2.0. mmcv 2.1.0 is published only as a source release that does
not build against recent torch as is, so this script installs a prebuilt mmcv wheel that matches the running Python
and torch (from ``--wheel-dir`` or the wheel cache) or builds one from the source release with the needed fixes
(``setuptools<70`` for ``pkg_resources``, C++20 for the torch headers) and caches it. It then installs the packages of
the ``mm`` extra in pyproject.toml and ``setuptools<82``, whose ``pkg_resources`` mmengine still imports.

    python tools/install_openmmlab.py [--wheel-dir DIR ...] [--cache-dir DIR] [--jobs N] [--force-build]

Every pip call uses the Python that runs this script. CUDA ops are built when torch sees a GPU (or FORCE_CUDA=1).
"""
import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename

MMCV_VERSION = "2.1.0"
BUILD_TOOLS = ["setuptools<70", "wheel", "ninja"]
# mmengine 0.10 imports pkg_resources at run time (config `mmdet::`/`mmseg::` references); setuptools 82 removed it.
RUNTIME_FIXES = ["setuptools<82"]
CXX_STANDARD_FLAGS = ("-std=c++14", "-std=c++17")
CXX_STANDARD_FIX = "-std=c++20"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Imports mmcv's compiled extension and runs one op, which fails when the wheel was built against another torch.
MMCV_OPS_CHECK = "import torch; from mmcv.ops import nms; nms(torch.rand(4, 4).cumsum(1), torch.rand(4), 0.5)"


def log(message):
    print(f"[install_openmmlab] {message}", flush=True)


def run(command, env=None, cwd=None):
    log("$ " + " ".join(str(part) for part in command))
    subprocess.run([str(part) for part in command], check=True, env=env, cwd=cwd)


def pip(*args, env=None):
    run([sys.executable, "-m", "pip", *args], env=env)


def mm_requirements():
    """The requirements of the ``mm`` extra, read from pyproject.toml so they are listed in one place."""
    with open(REPO_ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["optional-dependencies"]["mm"]


def torch_build_key():
    """Names the torch build a compiled mmcv wheel belongs to, e.g. ``torch-2.14.1+cu130-cpu``."""
    try:
        import torch
    except ImportError:
        sys.exit("install_openmmlab: torch is not installed in this Python; install torch first.")
    with_cuda = torch.cuda.is_available() or os.environ.get("FORCE_CUDA") == "1"
    return f"torch-{torch.__version__}-{'cuda' if with_cuda else 'cpu'}"


def compatible_wheels(directory):
    """mmcv wheels in ``directory`` whose tags this Python accepts."""
    supported = set(sys_tags())
    for path in sorted(Path(directory).glob(f"mmcv-{MMCV_VERSION}-*.whl")):
        if parse_wheel_filename(path.name)[3] & supported:
            yield path


def mmcv_ops_error():
    """None when the installed mmcv's compiled ops load and run, else the error text."""
    result = subprocess.run([sys.executable, "-c", MMCV_OPS_CHECK], capture_output=True, text=True)
    return None if result.returncode == 0 else result.stderr.strip().splitlines()[-1]


def install_mmcv_wheel(wheel):
    """Installs ``wheel`` in place of any installed mmcv; returns whether its compiled ops work with this torch."""
    pip("install", "--force-reinstall", "--no-deps", wheel)  # replaces an installed mmcv of the same version
    pip("install", wheel)  # its dependencies
    error = mmcv_ops_error()
    if error:
        log(f"{wheel.name} from {wheel.parent} does not work with the installed torch: {error}")
    return error is None


def check_toolchain():
    """Exits with a clear message when the compiler or the Python headers needed to build mmcv are missing."""
    compiler = os.environ.get("CXX", "c++")
    problems = []
    if shutil.which(compiler) is None:
        problems.append(f"no C++ compiler '{compiler}' on PATH (Debian/Ubuntu: apt-get install g++)")
    python_header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not python_header.is_file():
        problems.append(f"no Python headers ({python_header} is missing; Debian/Ubuntu: apt-get install python3-dev)")
    if problems:
        sys.exit("install_openmmlab: cannot build mmcv from source: " + "; ".join(problems)
                 + ". Install them, or pass --wheel-dir with a prebuilt mmcv wheel for this torch and Python.")


def build_mmcv_wheel(output_dir, jobs):
    """Builds mmcv's source release with compiled ops into ``output_dir`` and returns the wheel's path."""
    check_toolchain()
    with tempfile.TemporaryDirectory(prefix="mmcv-build-") as work:
        work = Path(work)
        # Build tools go to a private directory on PYTHONPATH so the installed setuptools is left untouched.
        tools = work / "build-tools"
        pip("install", "--quiet", "--target", tools, *BUILD_TOOLS)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tools), os.environ.get("PYTHONPATH")])),
                   PATH=os.pathsep.join([str(tools / "bin"), os.environ["PATH"]]),
                   MMCV_WITH_OPS="1", MAX_JOBS=str(jobs))
        pip("download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:", "--dest", work,
            f"mmcv=={MMCV_VERSION}", env=env)
        with tarfile.open(work / f"mmcv-{MMCV_VERSION}.tar.gz") as archive:
            archive.extractall(work, filter="data")
        source = work / f"mmcv-{MMCV_VERSION}"
        setup_py = source / "setup.py"
        text = setup_py.read_text()
        if not any(flag in text for flag in CXX_STANDARD_FLAGS):
            sys.exit(f"install_openmmlab: {setup_py} sets none of {CXX_STANDARD_FLAGS}; the source release changed.")
        for flag in CXX_STANDARD_FLAGS:
            text = text.replace(flag, CXX_STANDARD_FIX)
        setup_py.write_text(text)
        log(f"building mmcv {MMCV_VERSION} with {jobs} jobs (about 8 minutes on 2 CPU cores, 3 GB of memory)")
        started = time.monotonic()
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", work / "dist",
             source], env=env)
        log(f"built mmcv in {time.monotonic() - started:.0f} s")
        output_dir.mkdir(parents=True, exist_ok=True)
        (wheel,) = (work / "dist").glob("mmcv-*.whl")
        return Path(shutil.move(wheel, output_dir / wheel.name))


def installed_mmcv_version():
    result = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('mmcv'))"],
                            capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def install_mmcv(wheel_dirs, cache_dir, jobs, force_build):
    """Keeps a working mmcv 2.1.0, else installs the first prebuilt or cached wheel whose ops work, else builds,
    caches and installs one."""
    if not force_build:
        if installed_mmcv_version() == MMCV_VERSION and mmcv_ops_error() is None:
            log(f"mmcv {MMCV_VERSION} is installed and its compiled ops work")
            return
        for directory in [*wheel_dirs, cache_dir]:
            for wheel in compatible_wheels(directory):
                if install_mmcv_wheel(wheel):
                    log(f"installed mmcv from {wheel}")
                    return
    wheel = build_mmcv_wheel(cache_dir, jobs)
    log(f"cached {wheel}")
    if not install_mmcv_wheel(wheel):
        sys.exit(f"install_openmmlab: the freshly built {wheel} does not load; see the error above.")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel-dir", type=Path, action="append", default=[],
                        help="folder with prebuilt mmcv wheels to try first (repeatable)")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("VISION2D_CACHE", Path.home() / ".cache" / "vision2d")) / "wheels",
                        help="where built mmcv wheels are kept, one sub-folder per torch build "
                             "(default: $VISION2D_CACHE/wheels or ~/.cache/vision2d/wheels)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs")
    parser.add_argument("--force-build", action="store_true",
                        help="build mmcv from source even when a prebuilt or cached wheel exists")
    args = parser.parse_args()
    install_mmcv(args.wheel_dir, args.cache_dir / torch_build_key(), args.jobs, args.force_build)
    pip("install", *mm_requirements(), *RUNTIME_FIXES)
    run([sys.executable, "-c", "import mmcv, mmdet, mmengine, mmseg; "
         "print('mmengine', mmengine.__version__, 'mmcv', mmcv.__version__, "
         "'mmdet', mmdet.__version__, 'mmseg', mmseg.__version__)"])
    log("done")


if __name__ == "__main__":
    main()
