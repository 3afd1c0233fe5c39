# A CUDA worker: one process per GPU, models resident.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service service
COPY workers workers
COPY optimization optimization
COPY tally tally
RUN pip install --no-cache-dir .
CMD ["tally", "worker", "--model", "sdxl-turbo"]
