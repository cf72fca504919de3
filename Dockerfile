# pgwarden container: multi-stage build, slim Python base, non-root user, health check on /healthz.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY policies ./policies
COPY rewriter ./rewriter
RUN python -m venv /opt/pgwarden && /opt/pgwarden/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /etc/pgwarden pgwarden
COPY --from=build /opt/pgwarden /opt/pgwarden
COPY config/pgwarden.yaml /etc/pgwarden/pgwarden.yaml
ENV PATH=/opt/pgwarden/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
EXPOSE 6432 9187
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/healthz', timeout=2)"]
ENTRYPOINT ["pgwarden", "run"]
CMD ["--config", "/etc/pgwarden/pgwarden.yaml"]
