# Three images from one file: `api` (the API, with torch's CPU build for memory traces),
# `worker` (torch + the training stack) and `flower` (Celery's monitor, no torch).
# On linux/x86_64 PyPI's torch==2.13.0 wheel is the CUDA build the worker needs.
FROM python:3.11-slim AS base
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 LORACLE_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY advisor ./advisor
COPY api ./api
COPY worker ./worker
COPY loracle ./loracle
COPY memtrace ./memtrace
COPY cli ./cli

FROM base AS api
# `"method": "trace"` estimates run `python -m memtrace` in a subprocess of the API
# (memtrace/runner.py), which imports torch, transformers, peft and bitsandbytes: the
# worker extra. A trace runs on the CPU with meta tensors and needs no CUDA, so torch comes
# from PyTorch's CPU wheel index first (a few hundred MB instead of PyPI's CUDA build and its
# several GB of nvidia-* wheels); 2.13.0+cpu satisfies the extra's torch==2.13.0 pin, so the
# second install keeps it.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install '.[worker,postgres]'
EXPOSE 8000
CMD ["loracle", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
RUN pip install '.[worker,postgres]'
CMD ["loracle", "worker"]

FROM base AS flower
# The core install (no torch) and Flower: it reads the broker, never the job store.
RUN pip install '.[monitor]'
EXPOSE 5555
CMD ["celery", "flower", "--port=5555"]
