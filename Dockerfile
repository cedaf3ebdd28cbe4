# The engine's image: `rules-engine` with the shipped rules, playbooks and snapshot, plus promtool and prometheus
# for `rules-engine backfill` (docker-compose.yml backfills the recording rules with them).
FROM prom/prometheus:v2.53.2 AS prometheus

FROM python:3.11-slim
COPY --from=prometheus /bin/promtool /bin/prometheus /usr/local/bin/
WORKDIR /app
COPY pyproject.toml README.md ./
COPY rules_engine ./rules_engine
RUN pip install --no-cache-dir .
COPY rules ./rules
COPY snapshots ./snapshots
COPY docker ./docker
COPY alertmanager ./alertmanager
USER nobody
ENTRYPOINT ["rules-engine"]
CMD ["evaluate", "--rules", "rules/", "--snapshot", "snapshots/demo.snapshot"]
