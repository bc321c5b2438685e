"""Builds the Cython frame pump (csrc/wsrelay/pump/) into ``wsrelay.pump._compiled``.

Everything else is declared in pyproject.toml. ``WSRELAY_CYTHON_ANNOTATE=1`` writes the
HTML annotation next to the .pyx, to check the hot path stays free of Python calls.

``WSRELAY_NO_EXTENSIONS=1`` (like aiohttp's ``AIOHTTP_NO_EXTENSIONS``) builds no extension,
so installing from the sdist needs no C compiler; wsrelay then runs its pure-Python pump
(``wsrelay.pump`` falls back to it when ``_compiled`` is missing; ``wsrelay --version`` says
"python").
"""

import glob
import os
import shutil

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

NO_EXTENSIONS = os.environ.get("WSRELAY_NO_EXTENSIONS", "") not in ("", "0")


class BuildPyWithPxd(build_py):
    """Ship the pump's C interface (csrc/wsrelay/pump/*.pxd) in the wheel, beside the module,
    so other Cython code can ``cimport wsrelay.pump._compiled`` (not without the module)."""

    def run(self):
        super().run()
        if NO_EXTENSIONS:
            return
        target = os.path.join(self.build_lib, "wsrelay", "pump")
        os.makedirs(target, exist_ok=True)
        for pxd in glob.glob(os.path.join("csrc", "wsrelay", "pump", "*.pxd")):
            shutil.copy(pxd, target)


def extensions():
    if NO_EXTENSIONS:
        print("WSRELAY_NO_EXTENSIONS is set: not building the compiled pump; the pure-Python pump runs")
        return []
    from Cython.Build import cythonize

    return cythonize(
        [
            Extension(
                "wsrelay.pump._compiled",
                ["csrc/wsrelay/pump/_compiled.pyx"],
                depends=["csrc/wsrelay/pump/side.pxi", "csrc/wsrelay/pump/client_stream.pxi",
                         "csrc/wsrelay/pump/_compiled.pxd"],
                extra_compile_args=["-O2"],
            ),
        ],
        include_path=["csrc"],
        annotate=os.environ.get("WSRELAY_CYTHON_ANNOTATE") == "1",
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )


setup(
    cmdclass={"build_py": BuildPyWithPxd},
    ext_modules=extensions(),
)
