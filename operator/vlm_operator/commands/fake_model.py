"""``vlm-operator fake-model``: serve the latency-emulating fake model.

Every flag also comes from the environment (``VLM_FAKE_<FLAG>``), which is how
the ``fake`` runtime's container is configured.
"""

from __future__ import annotations

import argparse
import asyncio

from vlm_operator.commands._env import (
    add_env_argument,
    listen_address,
    non_negative_float,
    positive_float,
    serving,
)

_PREFIX = "VLM_FAKE_"


def _model_id(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _seed(text: str) -> int | None:
    return int(text) if text.strip() else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlm_operator.fake_model import FakeModelConfig

    d = FakeModelConfig()
    add = add_env_argument
    add(parser, _PREFIX, "--listen", listen_address, f"{d.host}:{d.port}", "HOST:PORT to serve")
    add(parser, _PREFIX, "--model-id", _model_id, d.model_id, "model id in answers")
    add(parser, _PREFIX, "--base-seconds", positive_float, d.base_seconds,
        "solo service time of one request")  # fmt: skip
    add(parser, _PREFIX, "--alpha", non_negative_float, d.alpha,
        "contention: each extra request slows all by alpha")  # fmt: skip
    add(parser, _PREFIX, "--sigma", non_negative_float, d.sigma,
        "lognormal spread of the work (0: every request takes exactly base)")  # fmt: skip
    add(parser, _PREFIX, "--time-scale", positive_float, d.time_scale,
        "divides every duration")  # fmt: skip
    add(parser, _PREFIX, "--startup-seconds", non_negative_float, d.startup_seconds,
        "simulated model load; /health answers 503 until it is over")  # fmt: skip
    add(parser, _PREFIX, "--seed", _seed, d.seed, "seed of the work samples")


def run(args: argparse.Namespace) -> int:
    from vlm_operator.cli import UsageError
    from vlm_operator.fake_model import FakeModelConfig, serve

    host, port = args.listen
    _check_bounds(args)
    try:
        config = FakeModelConfig(
            model_id=args.model_id,
            host=host,
            port=port,
            base_seconds=args.base_seconds,
            alpha=args.alpha,
            sigma=args.sigma,
            time_scale=args.time_scale,
            startup_seconds=args.startup_seconds,
            seed=args.seed,
        )
        config.latency_model()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return serving(lambda: asyncio.run(serve(config)), "--listen", host, port)


#: The flags a VLMService's ``model.fake`` sets, by the field whose bounds they keep.
_SPEC_FLAGS = {
    "base_seconds": "--base-seconds",
    "alpha": "--alpha",
    "startup_seconds": "--startup-seconds",
    "time_scale": "--time-scale",
}


def _check_bounds(args: argparse.Namespace) -> None:
    """The bounds of the ``fake`` runtime's spec: beyond them the scaled durations
    overflow, and every request and health check would fail with a 500."""
    from pydantic import ValidationError

    from vlm_operator.cli import UsageError
    from vlm_operator.models import FakeModelSpec
    from vlm_operator.validation import field_errors

    values = {field: getattr(args, field.replace("-", "_")) for field in _SPEC_FLAGS}
    try:
        FakeModelSpec.model_validate(values)
    except ValidationError as exc:
        fields = FakeModelSpec.model_fields
        flags = {**_SPEC_FLAGS, **{fields[f].alias or f: x for f, x in _SPEC_FLAGS.items()}}
        problems = [
            f"{flags.get(error.path, error.path)}: {error.reason}" for error in field_errors(exc)
        ]
        raise UsageError("; ".join(problems)) from None
