"""docker-compose.yml cannot run here (no Docker engine), so read it: every file it mounts exists, the services
point at each other by the right names and ports, and the configs it mounts pass the real tools."""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from rules_engine.server.config import ServerConfig
from tests import processes
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SECRET_FILES = {spec["file"] for spec in COMPOSE.get("secrets", {}).values()}


def host_mounts():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                yield name, source


def test_services_and_dependencies_are_consistent():
    assert {"prometheus", "alertmanager", "grafana", "rules-engine"} <= set(SERVICES)
    named_volumes = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        depends = service.get("depends_on", [])
        assert set(depends) <= set(SERVICES), (name, depends)
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith(".") or source in named_volumes, (name, volume)
        for secret in service.get("secrets", []):
            assert secret in COMPOSE["secrets"], (name, secret)
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file()


def test_mounted_files_exist_except_the_documented_secrets():
    for name, source in host_mounts():
        if source.lstrip("./") in {s.lstrip("./") for s in SECRET_FILES} or source.startswith("./docker/secrets/"):
            assert "openssl rand" in (ROOT / "docker-compose.yml").read_text()  # the header says how to make them
            continue
        assert (ROOT / source).exists(), (name, source)


def test_engine_commands_are_real_cli_commands():
    from click.testing import CliRunner

    from rules_engine.cli import main

    for name, service in SERVICES.items():
        if service.get("build") == ".":
            command = service["command"]
            result = CliRunner().invoke(main, [command[0], "--help"])
            assert result.exit_code == 0, (name, result.output)
            for option in (part for part in command[1:] if part.startswith("--")):
                assert option in result.output, (name, option)


def test_wiring_between_services():
    alertmanager = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    urls = [hook["url"] for receiver in alertmanager["receivers"] for hook in receiver.get("webhook_configs", [])]
    assert "http://rules-engine:8080/alertmanager/webhook" in urls
    serve = ServerConfig.model_validate(yaml.safe_load((ROOT / "docker" / "serve.yaml").read_text()))
    assert serve.listen.endswith(":8080") and serve.prometheus.url == "http://prometheus:9090"
    assert "8080:8080" in SERVICES["rules-engine"]["ports"]
    token_mount = [v for v in SERVICES["alertmanager"]["volumes"] if "rules-engine-token" in v]
    assert token_mount and token_mount[0].split(":")[1] == \
        alertmanager["receivers"][1]["webhook_configs"][0]["http_config"]["authorization"]["credentials_file"]
    datasource = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def option(service: str, name: str) -> str:
    command = SERVICES[service]["command"]
    return command[command.index(name) + 1]


def test_every_service_reads_what_generate_wrote_not_committed_copies():
    out = option("generate", "--out")
    assert out == "/generated" and "generated:/generated" in SERVICES["generate"]["volumes"]
    for service in ("prometheus", "alertmanager", "grafana", "backfill"):
        assert any(v.startswith("generated:/generated") for v in SERVICES[service]["volumes"]), service
        assert not any(v.startswith(("./grafana", "./alertmanager")) for v in SERVICES[service].get("volumes", []))
    assert "--config.file=/generated/alertmanager/alertmanager.yml" in SERVICES["alertmanager"]["command"]
    # generate merges into the shipped config, which the image holds (Dockerfile COPY alertmanager)
    assert option("generate", "--alertmanager-config") == "alertmanager/alertmanager.yml"
    assert "COPY alertmanager ./alertmanager" in (ROOT / "Dockerfile").read_text()
    grafana = SERVICES["grafana"]
    assert grafana["environment"]["GF_PATHS_PROVISIONING"] == "/generated/grafana/provisioning"
    provider = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "rules-engine.yml").read_text())
    assert f"cp /generated/grafana/dashboards/*.json {provider['providers'][0]['options']['path']}/" in \
        " ".join(grafana["entrypoint"])
    prometheus = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == [f"{out}/prometheus/*.yml"]
    assert option("backfill", "--rules") == f"{out}/prometheus"


def test_live_exporter_backfill_monitor_and_serve_are_wired():
    prometheus = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in prometheus["scrape_configs"]}
    serve_host = option("exporter", "--serve").rsplit(":", 1)[1]
    assert targets["vllm"] == f"exporter:{serve_host}"
    assert next(j for j in prometheus["scrape_configs"] if j["job_name"] == "vllm")["honor_labels"] is True
    assert targets["rules-engine-monitor"] == f"monitor:{option('monitor', '--listen').rsplit(':', 1)[1]}"
    assert option("backfill", "--openmetrics") == option("exporter", "--out")
    assert SERVICES["backfill"]["depends_on"]["exporter"] == {"condition": "service_healthy"}
    assert SERVICES["prometheus"]["depends_on"]["backfill"] == {"condition": "service_completed_successfully"}
    assert option("monitor", "--prometheus") == "http://prometheus:9090"
    assert option("monitor", "--alertmanager") == "http://alertmanager:9093"
    assert "--monitor" in SERVICES["generate"]["command"]  # Prometheus leaves the monitor's alerts to it
    assert (ROOT / option("exporter", "--incidents")).is_file()
    from rules_engine.simulate import load_incidents
    assert load_incidents(ROOT / option("exporter", "--incidents"))
    assert "COPY --from=prometheus /bin/promtool /bin/prometheus" in (ROOT / "Dockerfile").read_text()


def test_prometheus_config_passes_promtool():
    require_binary(processes.PROMTOOL)
    result = subprocess.run([processes.PROMTOOL, "check", "config", str(ROOT / "docker" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
