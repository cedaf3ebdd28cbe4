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
    provider = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "rules-engine.yml").read_text())
    dashboards_mount = [v for v in SERVICES["grafana"]["volumes"] if v.startswith("./grafana/dashboards")]
    assert dashboards_mount[0].split(":")[1] == provider["providers"][0]["options"]["path"]


def test_prometheus_config_passes_promtool():
    require_binary(processes.PROMTOOL)
    result = subprocess.run([processes.PROMTOOL, "check", "config", str(ROOT / "docker" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
