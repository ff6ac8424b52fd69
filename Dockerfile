# The same install and start as `make run`. PostgreSQL: pass DATABASE_URL.
#   docker build -t issuelens .
#   docker run -p 8000:8000 -e DATABASE_URL=postgresql://user:pw@db:5432/issuelens \
#              -e AUTHOR_HASH_SALT=... issuelens
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/data \
    PYTHON=python3.11 \
    # The CPU build of torch: without this index pip picks the multi-GB CUDA build.
    TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

WORKDIR /srv
COPY pyproject.toml README.md Makefile ./
COPY app ./app
COPY pipelines ./pipelines
COPY models ./models
RUN make install

VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python3 -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/readyz')"
CMD ["make", "run"]
