"""Static checks of what users run without us: docker-compose.yml, the Dockerfile, the Kafka pom, `.ci/run`.

No Docker engine runs here, so the compose file is checked for what can break without one: every service
built from this repo runs a `cxpulse` command that exists, every file it copies exists, and the Kafka
image is the version the pom resolves.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml
from typer.main import get_command

from streams.cli import app
from streams.config import REPO_ROOT

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _pom_kafka_version() -> str:
    root = ET.parse(REPO_ROOT / "deploy/kafka/pom.xml").getroot()  # noqa: S314 - our own file
    version = root.find("m:properties/m:kafka.version", POM_NS)
    assert version is not None and version.text
    return version.text


def test_compose_kafka_image_matches_the_pom() -> None:
    assert COMPOSE["services"]["kafka"]["image"] == f"apache/kafka:{_pom_kafka_version()}"


def test_compose_services_built_here_run_existing_commands() -> None:
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    built = {name: svc for name, svc in COMPOSE["services"].items() if "build" in svc}
    assert built, "no service runs the cxpulse image"
    for name, service in built.items():
        assert (REPO_ROOT / service["build"]["dockerfile"]).is_file(), name
        assert service["command"][0] in commands, f"{name} runs unknown command {service['command'][0]}"
        for var in service.get("environment", {}):
            assert var.startswith("CXPULSE_"), f"{name}: {var}"


def test_compose_dependencies_exist() -> None:
    services = COMPOSE["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on missing {dependency}"


def test_dockerfile_copies_existing_paths() -> None:
    for line in (REPO_ROOT / "deploy/Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO_ROOT / source).exists(), source


def test_compose_env_vars_are_settings() -> None:
    from streams.config import Settings

    known = {f"CXPULSE_{name.upper()}" for name in Settings.model_fields}
    for service in COMPOSE["services"].values():
        for var in service.get("environment", {}):
            if var.startswith("CXPULSE_"):
                assert var in known, var


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci/run").read_text()
    commands = re.findall(r"^\s*(make \w+)\s*$", readme, flags=re.MULTILINE)
    assert "make test" in commands and "make demo" in commands
    assert re.search(r"^make test$", ci, flags=re.MULTILINE)


def test_readme_configuration_table_lists_every_setting() -> None:
    from streams.config import Settings

    readme = (REPO_ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`CXPULSE_{name.upper()}`" in readme, name


def test_pinned_paths_exist() -> None:
    assert Path(REPO_ROOT / "deploy/kafka/server.properties.template").is_file()
    assert Path(REPO_ROOT / "deploy/kafka/log4j2.properties").is_file()


def test_compose_mounts_existing_files_and_prometheus_scrapes_the_worker() -> None:
    services = COMPOSE["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"
    prometheus = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
    worker_port = str(services["worker"]["expose"][0])
    discovery = prometheus["scrape_configs"][0]["dns_sd_configs"][0]  # every scaled worker, not the first only
    assert (discovery["names"], discovery["type"], str(discovery["port"])) == (["worker"], "A", worker_port)
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    dashboards = services["grafana"]["volumes"]
    provider = yaml.safe_load((REPO_ROOT / "deploy/grafana/provisioning/dashboards/cxpulse.yml").read_text())
    assert any(v.endswith(":" + provider["providers"][0]["options"]["path"] + ":ro") for v in dashboards)
    assert "simulate" in services["simulator"]["command"]


def test_dashboards_use_the_provisioned_datasources() -> None:
    import json

    provisioned = yaml.safe_load((REPO_ROOT / "deploy/grafana/provisioning/datasources/cxpulse.yml").read_text())
    uids = {source["uid"] for source in provisioned["datasources"]}
    boards = sorted((REPO_ROOT / "deploy/grafana/dashboards").glob("*.json"))
    assert len(boards) == 3
    for path in boards:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] in uids, (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])


def test_make_demo_installs_no_test_tools_and_the_license_is_spdx() -> None:
    import tomllib

    makefile = (REPO_ROOT / "Makefile").read_text()
    runtime = makefile.split("$(BIN)/cxpulse: pyproject.toml", 1)[1].split("\n\n", 1)[0]
    assert "[test]" not in runtime and "pip install --quiet -e '.[embedded]'" in runtime
    demo = next(line for line in makefile.splitlines() if line.startswith("demo:"))
    assert "test-tools" not in demo
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # a string: the table form is deprecated (setuptools warned 4x)


def test_the_broker_outside_a_checkout_says_what_it_needs(tmp_path: Path, monkeypatch: object) -> None:
    import pytest

    from streams import broker
    from streams.errors import BrokerError

    monkeypatch.setattr(broker, "KAFKA_DEPLOY_DIR", tmp_path / "site-packages" / "deploy" / "kafka")  # type: ignore[attr-defined]
    with pytest.raises(BrokerError, match="source checkout"):
        broker.ensure_jars(tmp_path / "lib")


def test_readme_tables_name_only_real_settings_and_commands() -> None:
    from streams.config import Settings

    readme = (REPO_ROOT / "README.md").read_text()
    docs = "".join(path.read_text() for path in sorted((REPO_ROOT / "docs").glob("*.md")))
    known = {f"CXPULSE_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"`(CXPULSE_[A-Z_]+)`", readme + docs))
    assert named <= known, named - known
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    usage = (REPO_ROOT / "docs/usage.md").read_text()
    table = re.findall(r"^\| `cxpulse (\w+)", usage, flags=re.MULTILINE)
    assert table and set(table) <= commands, set(table) - commands
    assert commands <= set(table), commands - set(table)  # every command is in the table


def test_compose_reaches_kafka_from_the_host_keeps_stores_on_loopback_and_checks_the_worker() -> None:
    services = COMPOSE["services"]
    kafka = services["kafka"]["environment"]
    listeners = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    host = listeners["HOST"]
    assert host.startswith("127.0.0.1:")
    assert f"{host}:{host.split(':')[1]}" in services["kafka"]["ports"]  # published where it is advertised
    assert "HOST:PLAINTEXT" in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    health = " ".join(services["worker"]["healthcheck"]["test"])
    assert f"127.0.0.1:{services['worker']['expose'][0]}/readyz" in health
    assert services["worker"]["environment"]["CXPULSE_CLICKHOUSE_URL"].startswith("http://")


def test_the_image_installs_what_the_worker_imports_and_not_the_embedded_store() -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("chdb") for dep in project["dependencies"])  # the server in compose needs none
    assert project["optional-dependencies"]["embedded"] == ["chdb==4.4.0", "chdb-core==26.9.0"]  # wrapper, engine
    dockerfile = (REPO_ROOT / "deploy/Dockerfile").read_text()
    assert "pip install --no-cache-dir ." in dockerfile and "[embedded]" not in dockerfile


def test_every_long_running_service_has_a_healthcheck_and_named_volumes_are_declared() -> None:
    for name, service in COMPOSE["services"].items():
        if name in ("topics", "simulator"):
            continue  # a one-shot job and a load generator
        assert "healthcheck" in service, name
    used = {v.split(":")[0] for s in COMPOSE["services"].values() for v in s.get("volumes", [])}
    assert {v for v in used if not v.startswith(".")} == set(COMPOSE["volumes"])


def test_every_alert_links_its_section_of_the_runbook() -> None:
    runbook = (REPO_ROOT / "docs/runbook.md").read_text()
    anchors = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    rules = yaml.safe_load((REPO_ROOT / "deploy/prometheus/rules/alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"]["runbook_url"]
            assert url.startswith("https://") and url.split("#")[0].endswith("docs/runbook.md"), url
            assert url.split("#")[1] == rule["alert"].lower() in anchors, rule["alert"]


def test_no_dashboard_title_hard_codes_a_setting() -> None:
    import json

    for path in sorted((REPO_ROOT / "deploy/grafana/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            assert not re.search(r"fires at \d", panel["title"]), (path.name, panel["title"])


def test_the_readme_starts_with_what_it_is_the_two_commands_and_a_quick_start() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    heads = re.findall(r"^## (.+)$", readme, flags=re.MULTILINE)
    assert heads[:3] == ["The two commands", "Quick start for an analyst", "Documentation"]
    intro = readme.split("## ", 1)[0].strip().splitlines()
    assert len(intro) <= 5  # the title and three lines
    quick = readme.split("## Quick start for an analyst", 1)[1].split("```")[1].strip().splitlines()
    assert len(quick) <= 10 and any("report" in line for line in quick) and any("drivers" in line for line in quick)


def test_every_link_to_a_page_of_the_repository_exists() -> None:
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), (page.name, target)


def test_the_contract_is_cited_where_users_can_read_it() -> None:
    """Every citation points at docs/contract.md: the repository's users do not have the planning documents."""
    cited = []
    for path in REPO_ROOT.rglob("*"):
        if path.is_file() and not any(part in (".git", ".venv", "lib", "__pycache__") for part in path.parts):
            if path.suffix in (".py", ".md", ".avsc", ".json", ".yml", ".sql", ".toml") and "egg-info" not in str(path):
                if "METRICS" + ".md" in path.read_text(errors="replace"):
                    cited.append(str(path.relative_to(REPO_ROOT)))
    assert not cited, cited
    contract = (REPO_ROOT / "docs/contract.md").read_text()
    for number in range(1, 8):
        assert f"## {number}. " in contract
