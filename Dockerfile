# notifier: one image for every process (scheduler, worker, web); the command picks which.
#
#   docker build -t notifier .
#   docker run --rm -e NOTIFIER_SECRET_KEY=... -e NOTIFIER_REDIS_URL=redis://redis:6379/0 \
#     -v "$PWD/config:/app/config:ro" -v "$PWD/templates:/app/templates:ro" notifier validate
#
# Config and templates are not baked in: they are the policy team's, mounted read-only at
# /app/config and /app/templates (templates sit beside config, as notifier expects).
# Secrets (NOTIFIER_SECRET_KEY, NOTIFIER_<ACCOUNT>_TOKEN) come from the environment only.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user with a fixed uid, so file ownership on volumes is predictable.
RUN groupadd --system --gid 10001 notifier \
 && useradd --system --uid 10001 --gid notifier --home-dir /home/notifier --create-home \
      --shell /usr/sbin/nologin notifier \
 && mkdir -p /app/config /app/templates /data \
 && chown notifier:notifier /data

# Only what the package needs (see .dockerignore); no dev or test extras.
COPY pyproject.toml README.md /src/
COPY notifier /src/notifier
RUN pip install /src && rm -rf /src

ENV NOTIFIER_CONFIG=/app/config \
    NOTIFIER_DATA_DIR=/data \
    NOTIFIER_WEB_BIND=0.0.0.0:8080

WORKDIR /app
USER notifier:notifier
EXPOSE 8080

ENTRYPOINT ["notifier"]
CMD ["--help"]
