"""The compiled engine: the same results as the interpreted one, used only while fresh."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import pytest
from vlm_operator import simulator
from vlm_operator.baselines import make_autoscaler
from vlm_operator.simulator import _compiled, spec_for
from vlm_operator.traces import load_trace

EXPECT_COMPILED = os.environ.get("VLM_OPERATOR_EXPECT_COMPILED_ENGINE") == "1"


def _project_imports(relative: str) -> set[str]:
    """The vlm_operator modules one source imports, as paths under the package."""
    tree = ast.parse((_compiled.PACKAGE_ROOT / relative).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    paths = set()
    for name in names:
        if not name.startswith("vlm_operator."):
            continue
        path = Path(*name.split(".")[1:])
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if (_compiled.PACKAGE_ROOT / candidate).is_file():
                paths.add(candidate.as_posix())
    return paths


def test_the_digest_covers_every_project_module_the_engine_imports() -> None:
    seen: set[str] = set()
    todo = ["simulator/engine.py"]
    while todo and len(seen) < 100:
        relative = todo.pop()
        if relative not in seen:
            seen.add(relative)
            todo.extend(_project_imports(relative))
    assert "baselines.py" in seen  # the walk follows imports
    assert seen <= set(_compiled.SOURCES)


def _copy_sources(root: Path) -> Path:
    package = root / "vlm_operator"
    for relative in _compiled.SOURCES:
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_compiled.PACKAGE_ROOT / relative, package / relative)
    return package


def test_a_build_is_fresh_only_for_the_sources_it_was_compiled_from(tmp_path: Path) -> None:
    package = _copy_sources(tmp_path)
    assert _compiled.fresh_build(package) is None
    folder = _compiled.build_folder(package)
    folder.mkdir(parents=True)
    (folder / f"engine{EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    assert _compiled.fresh_build(package) == folder
    with (package / "policy.py").open("a") as source:
        source.write("# changed\n")
    assert _compiled.fresh_build(package) is None
    assert _compiled.build_folder(package) != folder


def _built(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [
        folder / f"engine{EXTENSION_SUFFIXES[0]}",
        folder / f"engine__mypyc{EXTENSION_SUFFIXES[0]}",
    ]
    for file in files:
        file.write_bytes(b"built")
    return files


def test_install_replaces_other_builds_but_not_a_build_in_progress(tmp_path: Path) -> None:
    native = tmp_path / "_native"
    old = native / "0123456789abcdef01234567"
    _built(old)
    working = native / ".partial-of-another-build"
    working.mkdir()
    abandoned = native / ".partial-abandoned"
    abandoned.mkdir()
    os.utime(abandoned, (0, 0))

    files = _built(tmp_path / "a")

    target = _compiled.install(files, native, "fedcba9876543210fedcba98")

    assert target == native / "fedcba9876543210fedcba98"
    assert sorted(p.name for p in target.iterdir()) == sorted(f.name for f in files)
    assert sorted(p.name for p in native.iterdir()) == [working.name, target.name]


def test_install_keeps_the_build_that_won_a_race(tmp_path: Path) -> None:
    native = tmp_path / "_native"
    first = _compiled.install(_built(tmp_path / "a"), native, "fedcba9876543210fedcba98")
    second = _compiled.install(_built(tmp_path / "b"), native, "fedcba9876543210fedcba98")
    assert second == first
    assert sorted(p.name for p in native.iterdir()) == [first.name]  # no leftover
    assert len(list(first.iterdir())) == 2


def test_the_environment_chooses_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    path = ["somewhere"]
    monkeypatch.setenv(_compiled.ENGINE_ENV, "interpreted")
    assert _compiled.use_fresh_build(path) is False
    assert path == ["somewhere"]
    assert _compiled.engine_choice_error() is None
    folder = _compiled.fresh_build()
    for choice in ("", "auto"):
        monkeypatch.setenv(_compiled.ENGINE_ENV, choice)
        path = ["somewhere"]
        assert _compiled.use_fresh_build(path) is (folder is not None)
        assert path == ([str(folder)] if folder else []) + ["somewhere"]
        assert _compiled.engine_choice_error() is None
    monkeypatch.setenv(_compiled.ENGINE_ENV, "fast")
    assert _compiled.engine_choice_error() == (
        "VLM_OPERATOR_SIM_ENGINE='fast': must be 'auto' (or unset) or 'interpreted'"
    )


def test_an_unreadable_source_means_no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable() -> None:
        raise FileNotFoundError("policy.py")

    monkeypatch.delenv(_compiled.ENGINE_ENV, raising=False)
    monkeypatch.setattr(_compiled, "fresh_build", unreadable)
    path = ["somewhere"]
    assert _compiled.use_fresh_build(path) is False
    assert path == ["somewhere"]


def _outcome(result: Any) -> tuple[object, ...]:
    # repr: the P95 series holds NaN where no answer came, and NaN != NaN.
    series = result.series
    return (
        result.sent,
        result.ended,
        result.status,
        result.replica_seconds,
        result.scale_ups,
        result.scale_downs,
        result.scale_events,
        result.events_processed,
        result.requests_issued,
        repr((series.t, series.replicas, series.ready, series.demand, series.p95)),
    )


RUNS = [
    ("measured-gradient", "ours", {}),
    ("measured-gradient", "static", {"cancel_on_disconnect": False}),
    ("step-burst", "ours", {"retries": 2}),
    ("step-burst", "keda", {"retries": 2, "routing": "least-loaded"}),
    ("step-burst", "hpa-inflight", {"retries": 2}),
    ("flash-spike", "kpa", {"retries": 2}),
    ("flash-spike", "ray", {"p95_from_buckets": False}),
    ("flash-spike", "hpa-cpu", {"metrics_outages": ((300.0, 420.0),)}),
]


@pytest.mark.parametrize(("trace_name", "policy", "config"), RUNS)
def test_the_compiled_engine_gives_the_interpreted_results_to_the_bit(
    trace_name: str, policy: str, config: dict[str, Any]
) -> None:
    if simulator.ENGINE != "compiled":
        message = "no compiled engine for these sources (make engine)"
        if EXPECT_COMPILED:
            pytest.fail(message)
        pytest.skip(message)
    interpreted = _compiled.load_interpreted_engine()
    assert not _compiled.is_compiled(interpreted)
    assert _compiled.is_compiled(simulator.engine)
    trace = load_trace(trace_name)
    spec = spec_for(trace)
    outcomes = [
        _outcome(
            module.simulate(
                trace,
                make_autoscaler(policy, spec),
                spec=spec,
                seed=3,
                config=module.SimConfig(**config),
            )
        )
        for module in (simulator.engine, interpreted)
    ]
    assert len(outcomes[0][0]) > 100
    assert outcomes[0] == outcomes[1]


def _engine_in(root: Path) -> str:
    """Which engine a fresh interpreter runs from the package copy under root."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop(_compiled.ENGINE_ENV, None)
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import vlm_operator.simulator as s; print(s.ENGINE, s.engine.__file__)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    kind, file = shown.stdout.split()
    assert Path(file).is_relative_to(root), file
    return kind


def test_a_build_serves_until_its_sources_change(tmp_path: Path) -> None:
    # The real build (mypyc and the C compiler) on a copy of the package: a
    # stale folder and an abandoned one are cleared, the copy runs compiled,
    # and runs interpreted again once a source changes.
    package = tmp_path / "vlm_operator"
    shutil.copytree(
        _compiled.PACKAGE_ROOT,
        package,
        ignore=shutil.ignore_patterns(_compiled.NATIVE_FOLDER, "__pycache__"),
    )
    native = package / "simulator" / _compiled.NATIVE_FOLDER
    for leftover in ("0123456789abcdef01234567", ".partial-x"):
        (native / leftover).mkdir(parents=True)
        (native / leftover / f"engine{EXTENSION_SUFFIXES[0]}").write_bytes(b"")
        os.utime(native / leftover, (0, 0))  # an interrupted build, long ago
    assert _engine_in(tmp_path) == "interpreted"

    folder = _compiled.build(package)

    assert folder == _compiled.build_folder(package)
    assert sorted(path.name for path in native.iterdir()) == [folder.name]
    assert _engine_in(tmp_path) == "compiled"
    assert _compiled.build(package) == folder  # fresh: nothing to do
    with (package / "latency.py").open("a") as source:
        source.write("# changed\n")
    assert _engine_in(tmp_path) == "interpreted"
