"""Builds the Cython frame pump (csrc/wsrelay/pump/) into ``wsrelay.pump._compiled``, and
compiles the session path's modules (``SESSION_PATH`` in src/wsrelay/compiled.py) from their
own ``.py`` sources, each into an extension of the same name.

Everything else is declared in pyproject.toml. ``WSRELAY_CYTHON_ANNOTATE=1`` writes the
HTML annotation next to the .pyx, to check the hot path stays free of Python calls.

``WSRELAY_NO_EXTENSIONS=1`` (like aiohttp's ``AIOHTTP_NO_EXTENSIONS``) builds no extension,
so installing from the sdist needs no C compiler; wsrelay then runs its pure-Python pump
(``wsrelay.pump`` falls back to it when ``_compiled`` is missing; ``wsrelay --version`` says
"python").
"""

import ast
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


def session_path() -> list[str]:
    """``SESSION_PATH`` of src/wsrelay/compiled.py, read without importing the package."""
    tree = ast.parse(open(os.path.join("src", "wsrelay", "compiled.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "SESSION_PATH":
            return list(ast.literal_eval(node.value))
    raise RuntimeError("src/wsrelay/compiled.py has no SESSION_PATH")


def extensions():
    if NO_EXTENSIONS:
        print("WSRELAY_NO_EXTENSIONS is set: not building the compiled pump; the pure-Python pump runs")
        return []
    from Cython.Build import cythonize

    pump = cythonize(
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
    # Python modules compiled as they are: no .pxd, and annotations not read as C types, so
    # whatever the .py accepts the extension accepts too (the .py is the pure-Python build of
    # the same code, and the suite runs both).
    session = cythonize(
        [Extension(name, [os.path.join("src", *name.split(".")) + ".py"], extra_compile_args=["-O2"])
         for name in session_path()],
        annotate=os.environ.get("WSRELAY_CYTHON_ANNOTATE") == "1",
        compiler_directives={"language_level": 3, "annotation_typing": False},
    )
    return pump + session


setup(
    cmdclass={"build_py": BuildPyWithPxd},
    ext_modules=extensions(),
)
