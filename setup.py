"""Builds the Cython frame pump (csrc/wsrelay/pump/) into ``wsrelay.pump._compiled``.

Everything else is declared in pyproject.toml. ``WSRELAY_CYTHON_ANNOTATE=1`` writes the
HTML annotation next to the .pyx, to check the hot path stays free of Python calls.
"""

import glob
import os
import shutil

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildPyWithPxd(build_py):
    """Ship the pump's C interface (csrc/wsrelay/pump/*.pxd) in the wheel, beside the module,
    so other Cython code can ``cimport wsrelay.pump._compiled``."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "wsrelay", "pump")
        os.makedirs(target, exist_ok=True)
        for pxd in glob.glob(os.path.join("csrc", "wsrelay", "pump", "*.pxd")):
            shutil.copy(pxd, target)

extensions = [
    Extension(
        "wsrelay.pump._compiled",
        ["csrc/wsrelay/pump/_compiled.pyx"],
        depends=["csrc/wsrelay/pump/side.pxi", "csrc/wsrelay/pump/client_stream.pxi",
                 "csrc/wsrelay/pump/_compiled.pxd"],
        extra_compile_args=["-O2"],
    ),
]

setup(
    cmdclass={"build_py": BuildPyWithPxd},
    ext_modules=cythonize(
        extensions,
        include_path=["csrc"],
        annotate=os.environ.get("WSRELAY_CYTHON_ANNOTATE") == "1",
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
