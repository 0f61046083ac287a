"""Build, verify, cache and load the native CPU kernels of every op (`kernels/cpu/*.cpp`), written once for all ops.

A kernel is compiled with the system C++ compiler ($CXX, else g++) on first use in a process, into a per-user cache
directory ($VISION2D_KERNEL_CACHE, else $XDG_CACHE_HOME/vision2d or ~/.cache/vision2d) under a name hashed from the
source (and the headers beside it), the flags, the compiler and the CPU, so later processes load it in milliseconds. Kernels need no torch headers;
they are plain C functions loaded with ctypes.

Sources: an installed wheel carries them inside the package (`vision2d/_kernels/`, copied there by `setup.py`); an
editable install or a checkout reads the repository's top-level `kernels/`.

The cache is verified, never trusted: every library is written under a temporary name, its SHA-256 is written
atomically beside it (`<name>.so.sha256`), and only then is it renamed into place. Before loading, the file's content
must match that hash; a truncated, corrupted or unrecorded library is rebuilt (loading such a file could crash the
interpreter). Only when the rebuild fails does the op report itself unavailable (and `auto` falls back with a warning).
Cached files get the usual permissions (0755 for libraries, 0644 for hashes, less the umask).
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
from typing import Callable, Optional

from .backends import forget_resolutions

FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC")
_PACKAGED_SOURCES = Path(__file__).resolve().parents[1] / "_kernels"
_CHECKOUT_SOURCES = Path(__file__).resolve().parents[2] / "kernels"


def kernel_source(relative: str) -> Path:
    """The path of a native source such as 'cpu/scan2d_cpu.cpp': the copy inside an installed package, else the
    repository checkout's `kernels/` (an editable install)."""
    packaged = _PACKAGED_SOURCES / relative
    return packaged if packaged.is_file() else _CHECKOUT_SOURCES / relative


def cache_dir() -> Path:
    root = os.environ.get("VISION2D_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vision2d")
    return Path(root)


def _cpu_description() -> str:
    """CPU model and feature flags (what -march=native compiles for)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _hash_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def is_verified(library: Path) -> bool:
    """True when `library` exists and its content matches the hash recorded when it was built."""
    try:
        return _hash_path(library).read_text().strip() == _file_sha256(library)
    except OSError:
        return False


def _write_atomically(target: Path, write: Callable[[str], None], mode: int):
    """`write(tmp_path)` under a unique temporary name in target's folder, chmod, then rename over `target`."""
    fd, tmp = tempfile.mkstemp(prefix=target.name + "-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _compile(compiler: str, source: Path, output: str):
    result = subprocess.run([compiler, *FLAGS, str(source), "-o", output], capture_output=True, text=True)
    if result.returncode != 0:
        head = "\n".join((result.stderr or result.stdout).strip().splitlines()[:8])
        raise RuntimeError(f"{compiler} failed to build {source} (exit {result.returncode}):\n{head}")


def build(source: Path, compiler: str, attempts: int = 3) -> Path:
    """The verified cached library of `source`, compiled (again) when missing or when its content does not match its
    recorded hash."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    headers = [h.read_text() for h in sorted(source.parent.glob("*.h"))]  # what the source may #include
    key = hashlib.sha256("\0".join([source.read_text(), *headers, *FLAGS, version, _cpu_description()]).encode())
    key = key.hexdigest()
    target = cache_dir() / f"{source.stem}-{key[:16]}.so"
    for _ in range(attempts):  # a concurrent build of other bytes may land between our two renames: build again
        if is_verified(target):
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
                built = os.path.join(scratch, target.name)
                _compile(compiler, source, built)
                digest = _file_sha256(Path(built))
                # the hash goes in first: a library renamed into place always has its hash beside it (a crash in
                # between leaves a hash without its library, which rebuilds)
                _write_atomically(_hash_path(target), lambda tmp: Path(tmp).write_text(digest + "\n"), 0o644)
                _write_atomically(target, lambda tmp: shutil.copyfile(built, tmp), 0o755)
        except OSError as e:
            raise RuntimeError(f"cannot write the kernel cache {target.parent} ({e}); set $VISION2D_KERNEL_CACHE") \
                from e
    if not is_verified(target):
        raise RuntimeError(f"the cached kernel {target} kept changing while it was built ({attempts} attempts)")
    return target


class NativeLibrary:
    """One native kernel library: `kernels/<relative>` built on first use, loaded once per process.

    `declare(lib)` sets the ctypes signatures of its functions. `load()` raises RuntimeError with the reason when the
    library cannot be built or loaded; `unavailable_reason()` returns that reason instead.
    """

    def __init__(self, relative: str, declare: Callable[[ctypes.CDLL], None]):
        self.relative = relative
        self.declare = declare
        self.source: Optional[Path] = None  # resolved on first load; tests may point it elsewhere
        self._lock = threading.Lock()
        self._library: Optional[ctypes.CDLL] = None
        self._failure: Optional[str] = None
        self._functions = {}  # name -> the loaded library's function

    def reset(self):
        """Forget the loaded library or the failure, so the next `load()` tries again (and ops choose anew)."""
        with self._lock:
            self._library, self._failure = None, None
            self._functions = {}
        forget_resolutions()

    def _load_uncached(self) -> ctypes.CDLL:
        source = self.source or kernel_source(self.relative)
        if not source.is_file():
            raise RuntimeError(f"kernel source {source} not found: install vision2d from a wheel or source tree that "
                               f"ships kernels/{self.relative} (pip install <repo>, or pip install -e <repo>)")
        compiler = shutil.which(os.environ.get("CXX", "g++"))
        if compiler is None:
            raise RuntimeError(f"C++ compiler {os.environ.get('CXX', 'g++')!r} not found (set $CXX)")
        lib = ctypes.CDLL(str(build(source, compiler)))
        self.declare(lib)
        return lib

    def load(self) -> ctypes.CDLL:
        with self._lock:
            if self._library is None and self._failure is None:
                try:
                    self._library = self._load_uncached()
                except (RuntimeError, OSError, AttributeError) as e:
                    self._failure = str(e)
            if self._library is None:
                raise RuntimeError(self._failure)
            return self._library

    def channel_blocks(self, channels: int, itemsize: int) -> int:
        """How many channel blocks the kernels split `channels` channels of `itemsize` bytes into: one vector each,
        of the width the library was compiled with (64 bytes with AVX-512, 32 with AVX2)."""
        return -(-channels // (self.load().vector_bytes() // itemsize))  # ctypes' default: () -> int

    def unavailable_reason(self) -> Optional[str]:
        try:
            self.load()
        except RuntimeError as e:
            return str(e)
        return None

    def call(self, function: str, *args):
        """Call `function` of the library; a non-zero return is the kernel's allocation failure."""
        entry = self._functions.get(function)
        if entry is None:
            entry = self._functions[function] = getattr(self.load(), function)
        if entry(*args) != 0:
            raise MemoryError(f"{function}: could not allocate the kernel's scratch memory")
