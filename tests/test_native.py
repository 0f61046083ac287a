"""Building, verifying, caching and loading native kernels (`vision2d.ops.native`), for every op's kernel alike.

A tiny C source stands in for a kernel here so each case compiles in well under a second; the real kernels go
through the same `NativeLibrary` (checked at the end). Loading a corrupted library can kill the interpreter, so the
cases that load one run in a subprocess.
"""
import ctypes
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vision2d.ops import native

HAS_COMPILER = native.shutil.which(os.environ.get("CXX", "g++")) is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
SOURCE = 'extern "C" int answer(int x) { return x + 42; }\n'


def _declare(lib):
    lib.answer.argtypes = [ctypes.c_int]
    lib.answer.restype = ctypes.c_int


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A NativeLibrary of a tiny source, with the cache in tmp_path/cache."""
    monkeypatch.setenv("VISION2D_KERNEL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "answer.cpp"
    source.write_text(SOURCE)
    library = native.NativeLibrary("cpu/answer.cpp", _declare)
    library.source = source
    return library


def _cached(tmp_path):
    return sorted((tmp_path / "cache").glob("answer-*.so"))


def _load_in_subprocess(tmp_path) -> subprocess.CompletedProcess:
    """Load the tiny kernel from tmp_path's cache in a fresh interpreter; prints the kernel's answer."""
    code = textwrap.dedent(f"""
        import ctypes
        from pathlib import Path
        from vision2d.ops import native
        library = native.NativeLibrary("cpu/answer.cpp", lambda lib: None)
        library.source = Path({str(tmp_path / 'answer.cpp')!r})
        reason = library.unavailable_reason()
        print("REASON", reason) if reason else print("ANSWER", library.load().answer(1))
    """)
    env = dict(os.environ, VISION2D_KERNEL_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@needs_compiler
def test_build_records_a_hash_and_uses_normal_permissions(kernel, tmp_path):
    assert kernel.load().answer(1) == 43
    [library] = _cached(tmp_path)
    assert native.is_verified(library)
    umask = native._umask()
    assert stat.S_IMODE(library.stat().st_mode) == 0o755 & ~umask
    assert stat.S_IMODE(Path(str(library) + ".sha256").stat().st_mode) == 0o644 & ~umask
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".build-") or ".tmp" in p.name]


@needs_compiler
@pytest.mark.parametrize("damage", ["truncate", "corrupt", "empty", "no-hash", "bad-hash"])
def test_damaged_cache_is_rebuilt_not_loaded(kernel, tmp_path, damage):
    # built but never loaded here: rewriting a library this process has mapped would crash it (SIGBUS) later
    native.build(kernel.source, native.shutil.which(os.environ.get("CXX", "g++")))
    [library] = _cached(tmp_path)
    good = library.read_bytes()
    hash_file = Path(str(library) + ".sha256")
    if damage == "truncate":
        library.write_bytes(good[: len(good) // 3])
    elif damage == "corrupt":
        library.write_bytes(good[:64] + bytes(b ^ 0xFF for b in good[64:4096]) + good[4096:])
    elif damage == "empty":
        library.write_bytes(b"")
    elif damage == "no-hash":
        hash_file.unlink()
    else:
        hash_file.write_text("0" * 64 + "\n")
    assert not native.is_verified(library)
    result = _load_in_subprocess(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ANSWER 43" in result.stdout  # rebuilt, then loaded: neither a crash nor a fallback
    assert native.is_verified(library)


@needs_compiler
def test_verified_cache_is_reused_without_compiling(kernel, tmp_path, monkeypatch):
    kernel.load()
    [library] = _cached(tmp_path)
    mtime = library.stat().st_mtime_ns
    monkeypatch.setattr(native, "_compile", lambda *a: pytest.fail("recompiled a verified library"))
    kernel.reset()
    assert kernel.load().answer(0) == 42 and library.stat().st_mtime_ns == mtime


def test_missing_compiler_is_reported(kernel, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-vision2d")
    reason = kernel.unavailable_reason()
    assert reason is not None and "no-such-compiler-vision2d" in reason


@needs_compiler
def test_build_error_is_reported_and_leaves_nothing(kernel, tmp_path):
    kernel.source.write_text("this is not C++\n")
    reason = kernel.unavailable_reason()
    assert reason is not None and "failed to build" in reason and "answer.cpp" in reason
    assert not list((tmp_path / "cache").iterdir())  # no half-written library or hash left behind


def test_missing_source_is_reported(kernel, tmp_path):
    kernel.source = tmp_path / "nowhere" / "answer.cpp"
    reason = kernel.unavailable_reason()
    assert reason is not None and "not found" in reason and "kernels/cpu/answer.cpp" in reason


@needs_compiler
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only folders")
def test_unwritable_cache_is_reported(kernel, tmp_path):
    (tmp_path / "cache").mkdir(mode=0o500)
    reason = kernel.unavailable_reason()
    assert reason is not None and "cannot write the kernel cache" in reason


@needs_compiler
def test_unwritable_cache_path_is_reported(kernel, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("VISION2D_KERNEL_CACHE", str(tmp_path / "file" / "cache"))
    reason = kernel.unavailable_reason()
    assert reason is not None and "cannot write the kernel cache" in reason


def test_failure_is_remembered_until_reset(kernel, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-vision2d")
    first = kernel.unavailable_reason()
    monkeypatch.delenv("CXX")
    assert kernel.unavailable_reason() == first  # one attempt per process, not one per call
    kernel.reset()
    assert kernel.unavailable_reason() is None or not HAS_COMPILER


@needs_compiler
@pytest.mark.skipif(native.platform.machine() not in ("x86_64", "AMD64"), reason="x86 vector units")
def test_kernels_use_the_widest_vector_register_and_size_blocks_by_it():
    from vision2d.ops import selective_scan_cpu, state_fusion_cpu
    flags = native._cpu_description().split()
    expected = 64 if "avx512f" in flags else 32  # -march=native: one AVX-512 register, else one AVX2 register
    for library in (selective_scan_cpu.LIBRARY, state_fusion_cpu.LIBRARY):
        assert library.load().vector_bytes() == expected
        assert library.channel_blocks(100, 4) == -(-100 // (expected // 4))  # float32 channels per block
        assert library.channel_blocks(100, 8) == -(-100 // (expected // 8))
