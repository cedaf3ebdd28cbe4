# The engine's image: `rules-engine` with the shipped rules, playbooks and snapshot.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY rules_engine ./rules_engine
RUN pip install --no-cache-dir .
COPY rules ./rules
COPY snapshots ./snapshots
COPY docker ./docker
USER nobody
ENTRYPOINT ["rules-engine"]
CMD ["evaluate", "--rules", "rules/", "--snapshot", "snapshots/vllm-demo.snapshot"]
