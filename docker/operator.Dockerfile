# The operator image: the operator (`vlm-operator run`), the gate sidecar
# (`vlm-operator gate`) and the fake model (`vlm-operator fake-model`).
# The base package and uvloop (the gate's event loop when installed, about 8%
# less CPU per proxied request): no torch, no transformers.
#
#   make image-operator        (docker build -f docker/operator.Dockerfile .)

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[uvloop]" && rm -rf /wheels
# Numeric and the same as the pods' runAsUser, so runAsNonRoot can verify it.
RUN groupadd --system --gid 65532 vlm \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin vlm
USER 65532:65532
ENTRYPOINT ["vlm-operator"]
CMD ["run"]
