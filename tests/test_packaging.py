"""The suite tests what users install: the wheel, its compiled pump, its stubs and C interface.

``make test`` (and cibuildwheel) run the suite with ``WSRELAY_EXPECT_INSTALLED=1`` against a
wheel installed into a fresh venv; then wsrelay must come from that venv's site-packages,
never from ``src/`` or an editable install. Without the variable (a developer's editable
.venv), the checks that only hold for an installed wheel are skipped; the others still run.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import wsrelay
from wsrelay import pump

EXPECT_INSTALLED = os.environ.get("WSRELAY_EXPECT_INSTALLED") == "1"
installed_only = pytest.mark.skipif(not EXPECT_INSTALLED,
                                    reason="checks an installed wheel: run through 'make test'")


def site_packages() -> set[Path]:
    """This interpreter's own site-packages (purelib and platlib of sys.prefix)."""
    paths = sysconfig.get_paths()
    return {Path(paths["purelib"]).resolve(), Path(paths["platlib"]).resolve()}


@installed_only
def test_wsrelay_is_imported_from_the_venv_site_packages_not_the_tree():
    package = Path(wsrelay.__file__).resolve().parent
    assert package.parent in site_packages(), f"wsrelay was imported from {package}"
    assert "src" not in package.parts[-3:], package
    assert Path(sys.prefix).resolve() in package.parents


@installed_only
def test_the_compiled_pump_is_loaded_from_the_installed_wheel():
    assert pump.default_name() == "cython"
    compiled = pump.load("cython")
    so = Path(compiled.__file__).resolve()
    assert so.suffix == ".so" and so.parent.parent.parent in site_packages(), so
    assert compiled.IMPLEMENTATION == "cython"


@installed_only
def test_the_install_is_a_wheel_not_an_editable_checkout():
    dist = importlib.metadata.distribution("wsrelay")
    direct_url = dist.read_text("direct_url.json")
    if direct_url is not None:      # pip writes it for a wheel file given by path
        info = json.loads(direct_url)
        assert not info.get("dir_info", {}).get("editable"), info
        assert info["url"].endswith(".whl"), info["url"]
    assert dist.read_text("WHEEL") is not None
    tags = [line for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag:")]
    # manylinux from `make test` and cibuildwheel's glibc images, musllinux from its Alpine one
    assert tags and all(re.search(r"-(manylinux_\d+_\d+|manylinux2014|musllinux_\d+_\d+)_\w+$", tag) for tag in tags), tags


def package_dir() -> Path:
    return Path(wsrelay.__file__).resolve().parent


def test_the_package_ships_its_typing_marker_and_stubs():
    root = package_dir()
    assert (root / "py.typed").is_file()
    assert (root / "pump" / "_compiled.pyi").is_file()
    for name in ("index.html", "dashboard.js", "dashboard.css"):     # served by the admin port
        assert (root / "admin" / "dashboard" / name).is_file(), name


@installed_only
def test_the_package_ships_the_pumps_c_interface():
    pxd = package_dir() / "pump" / "_compiled.pxd"
    assert pxd.is_file() and "cdef class Side" in pxd.read_text()


@installed_only
def test_no_c_or_cython_sources_are_installed():
    shipped = [p.name for p in package_dir().rglob("*") if p.suffix in (".c", ".pyx", ".pxi", ".h")]
    assert shipped == []


def test_one_version_everywhere():
    """pyproject reads the version from wsrelay.__version__; metadata and --version agree."""
    assert importlib.metadata.version("wsrelay") == wsrelay.__version__
    wsrelay_bin = Path(sys.executable).parent / "wsrelay"
    out = subprocess.run([str(wsrelay_bin), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"wsrelay {wsrelay.__version__} (pump: {pump.default_name()})"


def test_the_readmes_version_example_is_this_version():
    """The README's and docs/install.md's Install show `wsrelay --version`'s output, version
    included: it must be this one."""
    root = Path(__file__).resolve().parent.parent
    for page in (root / "README.md", root / "docs" / "install.md"):
        shown = re.findall(r"^wsrelay --version +# wsrelay (\S+) \(pump: (\w+)\)$", page.read_text(), re.M)
        assert shown == [(wsrelay.__version__, "cython")], f"update {page.name}'s `wsrelay --version` example"


def test_version_names_the_python_pump_when_it_is_forced():
    wsrelay_bin = Path(sys.executable).parent / "wsrelay"
    out = subprocess.run([str(wsrelay_bin), "--version"], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, WSRELAY_PURE_PYTHON="1"))
    assert out.stdout.strip() == f"wsrelay {wsrelay.__version__} (pump: python)"


def test_without_the_compiled_module_the_pure_pump_runs_and_version_says_so():
    """As after an sdist install with WSRELAY_NO_EXTENSIONS=1 (``tools/wheels.py check-sdist``
    installs one with no compiler and runs its demo): no ``_compiled``, no error, the pure pump."""
    code = textwrap.dedent("""
        import sys
        sys.modules["wsrelay.pump._compiled"] = None        # import wsrelay.pump._compiled fails
        from wsrelay import pump
        from wsrelay.cli import version_line
        print(version_line())
        print(pump.default_name(), pump.load().IMPLEMENTATION)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "WSRELAY_PURE_PYTHON"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"wsrelay {wsrelay.__version__} (pump: python)", "python python"]


def test_setup_py_builds_no_extension_with_wsrelay_no_extensions(tmp_path):
    """setup.py's opt-out: with WSRELAY_NO_EXTENSIONS=1 it lists no extension and needs no Cython.
    (setuptools is stood in for: a 3.12+ test venv need not have it.)"""
    setup_py = Path(__file__).resolve().parent.parent / "setup.py"
    code = textwrap.dedent(f"""
        import sys, types
        captured = {{}}
        setuptools = types.ModuleType("setuptools")
        setuptools.Extension, setuptools.setup = object, lambda **kw: captured.update(kw)
        build_py = types.ModuleType("setuptools.command.build_py")
        build_py.build_py = object
        sys.modules.update({{"setuptools": setuptools, "setuptools.command": types.ModuleType("setuptools.command"),
                            "setuptools.command.build_py": build_py,
                            "Cython": None}})               # import Cython fails: not even Cython is needed
        exec(compile(open({str(setup_py)!r}).read(), "setup.py", "exec"), {{"__name__": "__main__"}})
        print(captured["ext_modules"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env=dict(os.environ, WSRELAY_NO_EXTENSIONS="1"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"


@installed_only
def test_other_cython_code_can_cimport_the_pump(tmp_path):
    """The shipped .pxd resolves for a third-party .pyx (as picows.pxd does for us): Cython
    translates a module that cimports wsrelay's Side and reads its C fields."""
    from Cython.Build import cythonize      # in the test extra: missing is a failure, not a skip
    source = tmp_path / "uses_pump.pyx"
    source.write_text(textwrap.dedent("""
        from wsrelay.pump._compiled cimport Side

        cdef long frames_of(Side side):
            return side.frames

        def frames(side):
            return frames_of(side)
    """))
    search = sorted(str(p) for p in site_packages())
    cythonize([str(source)], include_path=search, language_level=3, quiet=True, force=True)
    generated = tmp_path / "uses_pump.c"
    assert generated.is_file() and "__pyx_vtabstruct_7wsrelay_4pump_9_compiled_Side" in generated.read_text()


TOOLS_WHEELS = Path(__file__).resolve().parent.parent / "tools" / "wheels.py"


def pip_commands_that_build_wsrelay(source: str) -> list[tuple[int, list[str]]]:
    """Every ``[..., "pip", "wheel" | "install", ...]`` list in ``source`` that builds wsrelay: a
    ``pip wheel``, or a ``pip install`` of the sdist (a name or string containing "sdist")."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.List):
            continue
        words = [e.value if isinstance(e, ast.Constant) else ast.unparse(e) for e in node.elts]
        if "pip" not in words:
            continue
        rest = words[words.index("pip") + 1:]
        if rest[:1] == ["wheel"] or (rest[:1] == ["install"] and any("sdist" in w for w in rest[1:])):
            found.append((node.lineno, words))
    return found


def test_every_pip_build_of_wsrelay_bypasses_the_wheel_cache():
    """pip caches a wheel it built from a local sdist under the file's URL: without --no-cache-dir
    a rebuild after a source change with the same version would package the old code."""
    commands = pip_commands_that_build_wsrelay(TOOLS_WHEELS.read_text())
    assert len(commands) >= 2, commands           # the wheel build and the sdist check at least
    assert [(line, words) for line, words in commands if "--no-cache-dir" not in words] == []
    assert pip_commands_that_build_wsrelay('run(["py", "-m", "pip", "wheel", "-w", d, str(sdist)])') \
        == [(1, ["py", "-m", "pip", "wheel", "-w", "d", "str(sdist)"])]
