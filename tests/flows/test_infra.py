"""Static checks of the deployment files (none of them can run here: no Docker engine, no cluster, no GPU)."""

from __future__ import annotations

import importlib
import json
import re

import yaml

from tests.flows.conftest import REPO

# what a literal credential would look like in a committed file
SECRET_PATTERNS = [re.compile(p) for p in (r"AKIA[0-9A-Z]{16}", r"(?i)(secret|password)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{8,}")]


def _no_literal_secrets(text: str, where: str) -> None:
    for pattern in SECRET_PATTERNS:
        match = pattern.search(text)
        assert match is None, f"{where}: looks like a literal secret: {match.group(0)!r}"


def test_prefect_yaml_deployments_point_at_real_flows():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"local", "retrain-on-new-data", "gpu-k8s", "docker"}
    for name, d in deployments.items():
        path, _, func = d["entrypoint"].partition(":")
        assert (REPO / path).is_file(), name
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert flow.name in ("distill_pipeline", "retrain_on_new_data"), name
        # every parameter given in prefect.yaml is one the flow accepts
        assert set(d.get("parameters") or {}) <= set(flow.parameters.properties), name
    assert deployments["local"]["work_pool"]["name"] == "askd-local"
    assert deployments["gpu-k8s"]["work_pool"]["name"] == "askd-gpu-k8s"
    assert deployments["gpu-k8s"]["parameters"]["pull"] is True
    schedule = deployments["local"]["schedules"][0]
    assert schedule["cron"] and schedule["active"] is False  # retraining cron: present, off by default


def test_k8s_gpu_job_template_requests_gpus_and_reads_secrets():
    text = (REPO / "infra" / "k8s" / "gpu-job-template.json").read_text()
    template = json.loads(text)
    manifest = template["job_configuration"]["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert template["variables"]["properties"]["gpu_count"]["default"] >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    env = {e["name"]: e for e in container["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert set(env[name]) == {"name", "valueFrom"}, name  # only by reference to a Kubernetes Secret
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "{{ s3_secret_name }}"
    assert all("value" not in e for n, e in env.items() if n.startswith("AWS_"))
    # every {{ placeholder }} has a variable (Prefect fills them per run)
    placeholders = set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert placeholders <= set(template["variables"]["properties"]), placeholders - set(template["variables"]["properties"])
    _no_literal_secrets(text, "gpu-job-template.json")
    secret_example = (REPO / "infra" / "k8s" / "s3-secret.example.yaml").read_text()
    assert yaml.safe_load(secret_example)["stringData"]["AWS_SECRET_ACCESS_KEY"] == ""


def test_compose_has_server_postgres_s3_and_worker_without_secrets():
    text = (REPO / "infra" / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert {"prefect-server", "postgres", "minio", "worker"} <= set(services)
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert services["worker"]["build"]["dockerfile"] == "infra/Dockerfile"
    # every credential comes from the environment (${VAR:?...}), none is written here
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER", key):
                assert str(value).startswith("${") and ":?" in str(value), f"{key} = {value!r}"
    _no_literal_secrets(text, "docker-compose.yml")
    env_example = (REPO / "infra" / "env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", env_example, re.M) and re.search(r"^MINIO_ROOT_PASSWORD=$", env_example, re.M)


def _dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in (REPO / "infra" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current = f"{current} {line}" if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        keyword, _, rest = current.partition(" ")
        lines.append((keyword.upper(), rest))
        current = ""
    assert not current, f"{name}: dangling line continuation"
    return lines


def test_dockerfiles_parse():
    known = {"FROM", "RUN", "COPY", "ENV", "WORKDIR", "CMD", "ARG", "LABEL", "ENTRYPOINT", "EXPOSE", "USER"}
    for name, base in (("Dockerfile", "python:3.11"), ("Dockerfile.gpu", "nvidia/cuda:")):
        instructions = _dockerfile_instructions(name)
        assert instructions[0][0] == "FROM" and instructions[0][1].startswith(base), name
        assert {k for k, _ in instructions} <= known, name
        copied = [rest for k, rest in instructions if k == "COPY"]
        for rest in copied:
            for src in rest.split()[:-1]:
                assert src == "." or (REPO / src).exists(), f"{name}: COPY source {src} missing"
        assert any("requirements.txt" in rest for k, rest in instructions if k == "RUN"), name
        _no_literal_secrets((REPO / "infra" / name).read_text(), name)
    gpu = " ".join(rest for _, rest in _dockerfile_instructions("Dockerfile.gpu"))
    assert "download.pytorch.org/whl/cu" in gpu  # a CUDA build of torch
