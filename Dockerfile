# pgwarden container: multi-stage build, slim Python base, non-root user, listens on every interface, health check on /readyz.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE NOTICE ./
COPY proxy ./proxy
COPY policies ./policies
COPY rewriter ./rewriter
RUN python -m venv /opt/pgwarden && /opt/pgwarden/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /etc/pgwarden pgwarden
COPY --from=build /opt/pgwarden /opt/pgwarden
# No primary in it: set PGWARDEN__PRIMARY__HOST (and the rest, docs/configuration.md) or mount a config here.
COPY deploy/docker/pgwarden.yaml /etc/pgwarden/pgwarden.yaml
ENV PATH=/opt/pgwarden/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
EXPOSE 6432 9187
# Healthy only when pgwarden can serve: /readyz answers 503 while the primary does not accept connections.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PGWARDEN__HTTP__PORT', '9187'), timeout=2)"]
ENTRYPOINT ["pgwarden", "run"]
CMD ["--config", "/etc/pgwarden/pgwarden.yaml"]
