# One image for every Stagecast service; compose.yaml picks the service with `command:`
# (`stagecast edge ...`, `stagecast statekeeper ...`). See docs/deployment.md.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Only what the package needs (pyproject names README.md as its readme); never .venv or
# .stagecast from a developer's checkout.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY access ./access
COPY roomlog ./roomlog
COPY processes ./processes
COPY rtc ./rtc
COPY edge ./edge
COPY statekeeper ./statekeeper
COPY forwarder ./forwarder
COPY webhooks ./webhooks
COPY stagecast ./stagecast
# gcc only while pip builds the forwarder's C fan-out (rtc/_fanout.c), then removed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/stagecast --uid 10001 stagecast

# The statekeeper's SQLite default (.stagecast/statekeeper.db) lands here when no
# --database-url / STAGECAST_DATABASE_URL is given; the cluster uses PostgreSQL instead.
WORKDIR /var/lib/stagecast
USER stagecast

EXPOSE 7880
ENTRYPOINT ["stagecast"]
CMD ["--help"]
