"""The simulator's engine compiled with mypyc, used only while it matches the source.

Why compile. The engine is the simulator's hot loop: a simulated day is some
700,000 requests, each a few heap operations and a little float arithmetic.
Interpreted, that runs at 60,000-100,000 simulated requests per second on a
two-core machine, depending on the machine's load at the time; compiled with
mypyc (the compiler that ships with mypy: it turns the same annotated source
into a C extension) it runs about 1.6 times faster, with the same results to
the bit (a test compares every request of several runs).

Why not beside the source. An extension module next to ``engine.py`` would
shadow it, and a checkout would go on running an old build of a changed
engine. So a build lives in ``_native/<digest>/``, named after the digest of
the engine's source and of every project module it was compiled against, and
the package puts that folder first on its ``__path__`` only when the folder
for the sources as they are now exists. A changed source has a new digest:
the interpreter runs it until ``make engine`` (:func:`main`) builds it
again. An installed wheel has no build and runs interpreted.

``VLM_OPERATOR_SIM_ENGINE=interpreted`` runs the interpreted engine anyway.

The build needs mypy (the ``test`` extra) and a C compiler; using a build
needs neither.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableSequence
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

#: ``interpreted``: run engine.py even when a build exists; ``auto`` (or
#: unset): a fresh build if there is one.
ENGINE_ENV = "VLM_OPERATOR_SIM_ENGINE"

#: The engine's source and the project modules it imports, directly or not
#: (relative to the ``vlm_operator`` package): a build compiled against other
#: versions of them is not used. A test keeps this list complete.
SOURCES = (
    "simulator/engine.py",
    "baselines.py",
    "contract.py",
    "latency.py",
    "models.py",
    "policy.py",
    "traces.py",
    "yamlio.py",
)

#: Where builds live, under the simulator package.
NATIVE_FOLDER = "_native"

#: The name of the interpreted engine when the package runs the compiled one.
INTERPRETED_NAME = "vlm_operator.simulator._engine_interpreted"

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def source_digest(package_root: Path = PACKAGE_ROOT) -> str:
    """The digest of the sources a build is compiled from, and of the interpreter.

    The interpreter by its extension suffix (``.cpython-311-x86_64-linux-gnu.so``):
    version, ABI and platform, so that the build of another interpreter (a
    checkout shared between machines) never stands in the way of this one's.
    """
    digest = hashlib.sha256(EXTENSION_SUFFIXES[0].encode())
    for relative in SOURCES:
        digest.update(b"\0" + relative.encode() + b"\0")
        digest.update((package_root / relative).read_bytes())
    return digest.hexdigest()[:24]


def build_folder(package_root: Path = PACKAGE_ROOT) -> Path:
    """Where the build of the sources as they are now lives (whether it exists or not)."""
    return package_root / "simulator" / NATIVE_FOLDER / source_digest(package_root)


def fresh_build(package_root: Path = PACKAGE_ROOT) -> Path | None:
    """The folder of a build this interpreter can load for the current sources, if any."""
    folder = build_folder(package_root)
    if any((folder / f"engine{suffix}").is_file() for suffix in EXTENSION_SUFFIXES):
        return folder
    return None


def engine_choice_error() -> str | None:
    """What is wrong with ``VLM_OPERATOR_SIM_ENGINE``, if anything.

    Checked by the commands that simulate, not at import: a misspelt
    variable must not stop the package (and the operator) from loading.
    """
    choice = os.environ.get(ENGINE_ENV, "")
    if choice in ("", "auto", "interpreted"):
        return None
    return f"{ENGINE_ENV}={choice!r}: must be 'auto' (or unset) or 'interpreted'"


def use_fresh_build(package_path: MutableSequence[str]) -> bool:
    """Put a fresh build first on the simulator package's path; whether one was."""
    if os.environ.get(ENGINE_ENV, "") == "interpreted":
        return False
    try:
        folder = fresh_build()
    except OSError:  # a source unreadable: run what the interpreter finds
        return False
    if folder is None:
        return False
    package_path.insert(0, str(folder))
    return True


def is_compiled(module: ModuleType) -> bool:
    """Whether a module was loaded from an extension rather than from source."""
    return not str(getattr(module, "__file__", "")).endswith(".py")


def load_interpreted_engine() -> ModuleType:
    """engine.py as the interpreter runs it, whichever engine the package uses.

    For tests that compare the two engines, or that subclass the engine (an
    interpreted class cannot inherit from a compiled one).
    """
    from vlm_operator.simulator import engine

    if not is_compiled(engine):
        return engine
    if INTERPRETED_NAME in sys.modules:
        return sys.modules[INTERPRETED_NAME]
    spec = importlib.util.spec_from_file_location(
        INTERPRETED_NAME, PACKAGE_ROOT / "simulator" / "engine.py"
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {INTERPRETED_NAME} from engine.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is made.
    sys.modules[INTERPRETED_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[INTERPRETED_NAME]
        raise
    return module


def build(package_root: Path = PACKAGE_ROOT) -> Path:
    """Compile the engine into its digest's folder, unless it is there already.

    mypyc compiles a copy of the package in a temporary folder, so that the
    digest is taken of exactly what was compiled and nothing is written
    beside the sources; the folders of other digests are removed.
    """
    native = package_root / "simulator" / NATIVE_FOLDER
    with tempfile.TemporaryDirectory(prefix="vlm-engine-") as scratch:
        copy = Path(scratch) / "vlm_operator"
        shutil.copytree(
            package_root, copy, ignore=shutil.ignore_patterns(NATIVE_FOLDER, "__pycache__")
        )
        digest = source_digest(copy)
        target = native / digest
        if fresh_build(package_root) == target:
            return target
        compiled = subprocess.run(
            [sys.executable, "-m", "mypyc", "vlm_operator/simulator/engine.py"],
            cwd=scratch,
            capture_output=True,
            text=True,
            check=False,
        )
        if compiled.returncode != 0:
            raise RuntimeError(
                f"mypyc could not compile the engine (exit {compiled.returncode}):\n"
                f"{compiled.stdout[-4000:]}{compiled.stderr[-4000:]}"
            )
        built = [
            path
            for path in (copy / "simulator").iterdir()
            if path.name.startswith("engine") and path.name.endswith(tuple(EXTENSION_SUFFIXES))
        ]
        if not any(path.name.startswith("engine.") for path in built):
            raise RuntimeError(f"mypyc left no engine extension in {copy / 'simulator'}")
        return install(built, native, digest)


def install(built: list[Path], native: Path, digest: str) -> Path:
    """Move a build's files into ``native/digest`` and remove the builds of other digests.

    The files are gathered under a hidden name and renamed in one step, so a
    build interrupted half-way is never taken for a fresh one. Two builds of
    the same sources may race (``make test`` and ``make bench-policy`` in two
    shells): the one that renames second keeps the first one's folder.
    Another build's hidden folder is left alone unless it is an hour old.
    """
    native.mkdir(exist_ok=True)
    target = native / digest
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=native))
    partial.chmod(0o755)
    for path in built:
        shutil.move(path, partial / path.name)
    try:
        partial.rename(target)
    except OSError:
        shutil.rmtree(partial)
        if not target.is_dir():
            raise
    abandoned = time.time() - 3600
    for old in native.iterdir():
        if old == target or not old.is_dir():
            continue
        if old.name.startswith(".") and old.stat().st_mtime > abandoned:
            continue
        shutil.rmtree(old, ignore_errors=True)
    return target


def main() -> int:
    """``make engine``: build the engine unless its build is fresh; exit status 0 once it is."""
    before = fresh_build()
    try:
        folder = build()
    except (RuntimeError, OSError) as error:
        print(f"engine not compiled: {error}", file=sys.stderr)
        return 1
    state = "up to date" if before == folder else "compiled"
    print(f"simulator engine {state}: {folder.relative_to(PACKAGE_ROOT.parent)}")
    return 0
