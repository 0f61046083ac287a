"""Ships the native kernel sources (top-level `kernels/`) inside the package as `vision2d/_kernels/`, so a wheel or a
non-editable install builds the compiled CPU kernels like a checkout does (see `vision2d/ops/native.py`)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

KERNELS = Path(__file__).resolve().parent / "kernels"
SOURCE_SUFFIXES = {".cpp", ".cc", ".h", ".hpp", ".cu", ".cuh"}


class BuildPyWithKernels(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:  # an editable install reads the checkout's kernels/ directly
            target = Path(self.build_lib) / "vision2d" / "_kernels"
            for source in sorted(KERNELS.rglob("*")):
                if source.suffix in SOURCE_SUFFIXES:
                    destination = target / source.relative_to(KERNELS)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildPyWithKernels})
