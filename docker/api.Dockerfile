# The API: small, no torch at import time (it still installs the package's dependencies).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service service
COPY workers workers
COPY optimization optimization
COPY tally tally
RUN pip install --no-cache-dir . && useradd -m tally
USER tally
EXPOSE 8000
CMD ["uvicorn", "--factory", "service.app:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
