"""What the images rely on, checked without a Docker engine.

The operator image carries the base package only, so the package must install
and every command it runs must start without torch or transformers. The wheel
is built once and installed into a clean virtualenv with its declared base
dependencies. The Dockerfiles are read: every file they copy must exist, and
they must run as a numeric non-root user (the pods' runAsNonRoot checks it).
`make demo` installs a subset of the extras (no torch); everything the demo
runs must import from it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
#: Failures of pip that mean "no package index reachable", not a packaging bug.
_OFFLINE = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "Max retries exceeded",
)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_there_are_both_images() -> None:
    assert {d.name for d in DOCKERFILES} == {"operator.Dockerfile", "model-server.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda d: d.name)
def test_dockerfile_copies_existing_files_and_runs_as_non_root(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    for keyword, rest in instructions:
        if keyword in ("COPY", "ADD") and "--from=" not in rest:
            *sources, _destination = rest.split()
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile.name}: {keyword} {source} is missing"
        if keyword == "FROM":
            assert rest.split()[0] == "python:3.11-slim"
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, f"{dockerfile.name} has no USER"
    user = users[-1].split(":")[0]
    # Numeric, so that the kubelet can verify runAsNonRoot without /etc/passwd.
    assert user.isdigit(), f"{dockerfile.name}: USER {users[-1]}"
    assert int(user) != 0, f"{dockerfile.name}: USER {users[-1]}"
    last_user = max(i for i, (k, _) in enumerate(instructions) if k == "USER")
    assert not any(k == "RUN" for k, _ in instructions[last_user:]), "RUN after USER"
    entrypoint = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint == ['["vlm-operator"]']


def test_operator_image_installs_the_base_package_and_uvloop_only() -> None:
    installs = [
        rest
        for keyword, rest in _instructions(REPO / "docker" / "operator.Dockerfile")
        if keyword == "RUN" and "pip install" in rest
    ]
    assert installs
    for command in installs:
        assert re.findall(r"\[[^\]]*\]", command) in ([], ["[uvloop]"]), command
        assert "torch" not in command, command


def test_model_server_image_installs_the_pinned_cpu_torch_before_the_extra() -> None:
    instructions = _instructions(REPO / "docker" / "model-server.Dockerfile")
    args = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG")
    makefile = (REPO / "Makefile").read_text()
    pinned = re.search(r"^TORCH_SPEC \?= (\S+)$", makefile, re.MULTILINE)
    assert pinned is not None
    assert args["TORCH_SPEC"] == pinned[1]
    assert re.fullmatch(r"torch==[0-9.]+", args["TORCH_SPEC"])
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if '"$TORCH_SPEC"' in r)
    extra_step = next(i for i, r in enumerate(runs) if "[model-server]" in r)
    assert torch_step < extra_step
    assert "--index-url" in runs[torch_step]


# ------------------------------------------------------------- clean install


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from exactly what the image build copies: that proves the copy is
    # enough, and leaves no build/ directory in the work tree.
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for keyword, rest in _instructions(REPO / "docker" / "operator.Dockerfile"):
        if keyword == "COPY" and "--from=" not in rest:
            for name in rest.split()[:-1]:
                if (REPO / name).is_dir():
                    shutil.copytree(REPO / name, source / name, ignore=ignore)
                else:
                    shutil.copy(REPO / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
         str(source)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if build.returncode != 0 and any(marker in build.stderr for marker in _OFFLINE):
        pytest.skip("building the wheel needs setuptools from a package index; none reachable")
    assert build.returncode == 0, build.stderr
    (found,) = out.glob("vlm_operator-*.whl")
    return found


def test_wheel_declares_no_heavy_base_dependency_and_ships_its_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(metadata_name).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [line for line in requires if "extra ==" not in line]
    assert base
    for heavy in ("torch", "transformers", "pillow", "matplotlib"):
        assert not any(heavy in line.lower() for line in base), base
    assert any("torch" in line and 'extra == "model-server"' in line for line in requires)
    assert "vlm_operator/data/model_server/index.html" in names
    assert "vlm_operator/py.typed" in names
    assert not any(name.startswith("operator/") for name in names)


@pytest.fixture(scope="module")
def clean_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("clean-venv")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    python = venv / "bin" / "python"
    # The project's pip installs into the new venv: no pip bootstrap per venv.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--only-binary", ":all:", str(wheel)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    if install.returncode != 0 and any(marker in install.stderr for marker in _OFFLINE):
        pytest.skip("installing the base dependencies needs a package index; none reachable")
    assert install.returncode == 0, install.stderr
    return venv


@pytest.mark.slow
def test_base_install_has_no_model_server_extra(clean_venv: Path) -> None:
    probe = (
        "import importlib.util, json; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None "
        "for m in ('vlm_operator', 'kopf', 'aiohttp', 'torch', 'transformers', 'PIL')}))"
    )
    result = subprocess.run(
        [str(clean_venv / "bin" / "python"), "-c", probe],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == (
        '{"vlm_operator": true, "kopf": true, "aiohttp": true, '
        '"torch": false, "transformers": false, "PIL": false}'
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [[], ["gate"], ["fake-model"], ["run"], ["model-server"], ["crd"], ["render"]],
    ids=lambda c: " ".join(c) or "vlm-operator",
)
def test_image_entry_points_start_without_the_extras(clean_venv: Path, command: list[str]) -> None:
    result = subprocess.run(
        [str(clean_venv / "bin" / "vlm-operator"), *command, "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: vlm-operator")


@pytest.mark.slow
def test_model_server_without_the_extra_says_how_to_install_it(
    clean_venv: Path, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = subprocess.run(
        [str(clean_venv / "bin" / "vlm-operator"), "model-server", "--model", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "missing: torch, transformers, pillow" in result.stderr
    assert "pip install '.[model-server]'" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------- the demo's subset

#: What `make demo` runs: the local cluster, its API server and Prometheus, and
#: the package's processes but the model server (the demo's pods run the fake
#: model) and `inspect`.
_DEMO_SOURCES = (
    "e2e/demo.py",
    "e2e/prometheus.py",
    "e2e/localcluster",
    "e2e/kubeapi",
    "operator/vlm_operator",
)
_NOT_IN_THE_DEMO = (
    "operator/vlm_operator/model_server",
    "operator/vlm_operator/inspection.py",
    "operator/vlm_operator/commands/inspect.py",
)


def _third_party_imports(paths: list[Path]) -> dict[str, str]:
    """Top-level module -> one file importing it, eagerly or lazily."""
    found: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in ("e2e", "vlm_operator"):
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def _requirement_closure(requirements: list[str]) -> set[str]:
    """The installed distributions these requirements pull in, transitively."""
    seen: set[str] = set()
    pending = list(requirements)
    while pending:
        requirement = Requirement(pending.pop())
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            # Only a requirement's unconditional dependencies: its extras are not asked for.
            marker = Requirement(line).marker
            if marker is None or marker.evaluate({"extra": ""}):
                pending.append(line)
    return seen


def test_the_demo_installs_what_it_imports_and_no_torch() -> None:
    makefile = (REPO / "Makefile").read_text()
    match = re.search(r"^DEMO_EXTRAS \?= (\S+)$", makefile, re.MULTILINE)
    assert match is not None
    extras = set(match[1].split(","))
    declared = importlib.metadata.metadata("vlm-operator").get_all("Provides-Extra") or []
    assert extras <= set(declared), extras - set(declared)
    assert not extras & {"test", "model-server"}
    requirements = []
    for line in importlib.metadata.requires("vlm-operator") or []:
        requirement = Requirement(line)
        if requirement.marker is None or any(
            requirement.marker.evaluate({"extra": e}) for e in extras
        ):
            requirements.append(f"{requirement.name}{requirement.specifier}")
    installed = _requirement_closure(requirements)
    assert "torch" not in installed
    assert "pytest" not in installed
    sources = [
        path
        for source in _DEMO_SOURCES
        for path in (
            [REPO / source] if source.endswith(".py") else sorted((REPO / source).rglob("*.py"))
        )
        if not str(path.relative_to(REPO)).startswith(_NOT_IN_THE_DEMO)
        and "tests" not in path.parts
    ]
    distributions = importlib.metadata.packages_distributions()
    for module, importer in _third_party_imports(sources).items():
        providers = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert providers & installed, (
            f"{importer} imports {module}, which the demo's extras {sorted(extras)} do not install"
        )
