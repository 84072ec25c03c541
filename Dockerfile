# Two images from one file: `api` (no torch) and `worker` (torch + the training stack).
# On linux/x86_64 PyPI's torch==2.13.0 wheel is the CUDA build the worker needs.
FROM python:3.11-slim AS base
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 LORACLE_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY advisor ./advisor
COPY api ./api
COPY worker ./worker
COPY loracle ./loracle

FROM base AS api
RUN pip install '.[postgres]'
EXPOSE 8000
CMD ["loracle", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
RUN pip install '.[worker,postgres]'
CMD ["loracle", "worker"]
