# The reference model server: Qwen3-VL with Transformers, float32, on CPU
# (`vlm-operator model-server`, the `transformers` runtime preset).
# The model is not in the image: it is read from the pod's model storage.
#
#   make image-model-server    (docker build -f docker/model-server.Dockerfile .)

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# The CPU build of torch, installed before the extra so that pip never
# resolves the default build with its CUDA packages.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    VLM_MODEL_SERVER_MODEL=/models/Qwen3-VL-2B-Instruct
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
COPY --from=build /wheels /wheels
RUN whl="$(ls /wheels/*.whl)" \
    && pip install --no-cache-dir "${whl}[model-server]" && rm -rf /wheels
RUN groupadd --system --gid 65532 vlm \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin vlm
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["vlm-operator"]
CMD ["model-server"]
