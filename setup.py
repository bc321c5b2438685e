"""Builds the Cython frame pump (csrc/wsrelay/pump/) into ``wsrelay.pump._compiled``.

Everything else is declared in pyproject.toml. ``WSRELAY_CYTHON_ANNOTATE=1`` writes the
HTML annotation next to the .pyx, to check the hot path stays free of Python calls.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

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
