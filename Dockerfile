# Herald's own processes, for docker-compose.yml. The local path (`make up`) needs no Docker.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY herald herald
COPY streams streams
COPY agents agents
COPY schemas schemas
COPY sinks sinks
COPY api api
COPY infra infra
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
CMD ["herald", "--help"]
