"""Build step of sanp-keras: everything is in setup.cfg except the kernel library.

`pip install .` and `pip wheel .` compile `tflite/` (`make -C tflite`, the system C
compiler) into `sanp_keras/_kernels/libsanp_tflite.so` inside the installed package, for
every instruction set of the architecture (see `tflite/Makefile`), so the wheel is
platform specific. Without a C compiler the package installs without the library and
says so; `sanp_keras.export.build_kernels()` then names what is missing. Editable
installs build nothing here: they use `tflite/build/`, built on first use.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.abspath(__file__))
LIBRARY = "libsanp_tflite.so"


def _warn(message):
    print(f"sanp-keras: {message}", file=sys.stderr)


class BuildPyWithKernels(build_py):
    """build_py, then the kernel library into the package being built."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        compiler = os.environ.get("CC", "cc")
        if shutil.which(compiler.split()[0]) is None or shutil.which("make") is None:
            _warn(f"no C compiler ({compiler!r}, from $CC) or no make on PATH: installing "
                  "without the gated kernels (export kind 'kernels'). Install gcc or clang "
                  "and make, then reinstall to build them.")
            return
        target = os.path.join(self.build_lib, "sanp_keras", "_kernels")
        with tempfile.TemporaryDirectory() as build:
            # LITERT_LIB empty: the library resolves LiteRT in the process that loads it.
            command = ["make", "-C", os.path.join(ROOT, "tflite"), f"BUILD={build}",
                       "LITERT_LIB=", f"-j{min(4, os.cpu_count() or 1)}"]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError("Building the sanp kernels failed "
                                   f"({' '.join(command)}):\n{result.stdout}\n{result.stderr}")
            os.makedirs(target, exist_ok=True)
            shutil.copy2(os.path.join(build, LIBRARY), os.path.join(target, LIBRARY))


class BinaryDistribution(Distribution):
    """The wheel holds a compiled library: tag it with the platform."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildPyWithKernels}, distclass=BinaryDistribution)
