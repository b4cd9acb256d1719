# One image for every TrailGuard role: server, worker and the one-shot migrate job.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server server
COPY scoring scoring
COPY renderer renderer
COPY migrations migrations
COPY collector_js collector_js
# The CPU build of torch keeps the image small; a GPU worker image swaps this index.
RUN pip install --index-url https://download.pytorch.org/whl/cpu 'torch>=2.4,<2.15' torchvision \
    && pip install -e .

RUN useradd --create-home trailguard && mkdir -p /data && chown trailguard /data
USER trailguard
ENV TRAILGUARD_DATA_DIR=/data TRAILGUARD_MODEL_DIR=/data/models TRAILGUARD_HOST=0.0.0.0
EXPOSE 8000
CMD ["trailguard", "serve"]
