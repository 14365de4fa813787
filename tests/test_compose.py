"""Checks docker-compose.yml, as normalised by `docker-compose config`, against its rules."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SECRET_PATH = "/run/secrets/db_password"

Service = dict[str, Any]


def render(directory: Path, **env: str) -> dict[str, Any]:
    """Return the normalised compose config of a copy of docker-compose.yml made in directory."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose binary missing (apt-get install docker-compose)")
    shutil.copy(REPO / "docker-compose.yml", directory)
    # The secret file is git-ignored, so a checkout lacks it; newer compose versions want it.
    (directory / "secrets").mkdir(exist_ok=True)
    (directory / "secrets" / "db_password.txt").write_text("test-password\n")
    # Variables of the caller's shell would change the defaults that the tests check.
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"STUDY", "SEARCH_THREADS"} and not k.startswith("COMPOSE_")
    }
    result = subprocess.run(
        [compose, "-f", "docker-compose.yml", "config"],
        cwd=directory,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The normalised config with every variable at its default."""
    return render(tmp_path_factory.mktemp("compose"))


def services(config: dict[str, Any]) -> dict[str, Service]:
    """The services of a normalised config, by name."""
    return config["services"]


def published_ports(service: Service) -> list[tuple[str | None, str]]:
    """(host IP, None for all; host port, "" for a random one) of each published port."""
    out: list[tuple[str | None, str]] = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # long syntax, as compose v2 prints it
            out.append((port.get("host_ip"), str(port.get("published", ""))))
            continue
        # Short syntax, as compose v1 prints it: [HOST_IP:][PUBLISHED:]TARGET[/PROTO].
        parts = str(port).split("/")[0].rsplit(":", 2)
        host_ip = parts[0].strip("[]") if len(parts) == 3 else None
        out.append((host_ip, parts[-2] if len(parts) >= 2 else ""))
    return out


def secret_mounts(service: Service) -> dict[str, str]:
    """Secret name -> path where the service's containers see it."""
    mounts: dict[str, str] = {}
    for secret in service.get("secrets", []):
        source = secret if isinstance(secret, str) else secret["source"]
        target = source if isinstance(secret, str) else secret.get("target", source)
        mounts[source] = target if target.startswith("/") else f"/run/secrets/{target}"
    return mounts


def environment(service: Service) -> dict[str, str]:
    """The service's environment as a dict, whichever syntax the config uses."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def dockerfile_entrypoint() -> list[str]:
    """The exec-form ENTRYPOINT of the Dockerfile (the last one, as Docker uses)."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    found = [line.split(None, 1)[1] for line in lines if line.startswith("ENTRYPOINT ")]
    assert found, "Dockerfile has no ENTRYPOINT"
    # Exec form: the shell form would run `search` under /bin/sh, which does not pass signals.
    return json.loads(found[-1])


def argv(service: Service) -> list[str]:
    """The command line that the service's containers run."""
    entrypoint = service.get("entrypoint", dockerfile_entrypoint())
    command = service.get("command", [])
    to_list = shlex.split if isinstance(command, str) else list
    return to_list(entrypoint) + to_list(command)


def test_db_is_unreachable_from_the_host(config: dict[str, Any]) -> None:
    """The database is reachable from the compose network only."""
    db = services(config)["db"]
    # Rule: db publishes no port.
    assert published_ports(db) == []
    # Rule: db publishes no port (host networking would put it on every host interface).
    assert db.get("network_mode") != "host"


def test_only_the_dashboard_publishes_and_on_loopback(config: dict[str, Any]) -> None:
    """The dashboard, which has no authentication, is published on 127.0.0.1 only."""
    published = {name: published_ports(s) for name, s in services(config).items()}
    # Rule: dashboard published ONLY as 127.0.0.1:8080:8080.
    assert published.pop("dashboard") == [("127.0.0.1", "8080")]
    # Rule: only the dashboard publishes a port (workers must scale without port clashes).
    assert all(ports == [] for ports in published.values()), published


def test_password_comes_from_the_secret(config: dict[str, Any]) -> None:
    """db and worker read the password from the db_password secret, never from plain env."""
    svc = services(config)
    # Rule: the secret comes from ./secrets/db_password.txt.
    assert Path(config["secrets"]["db_password"]["file"]).parts[-2:] == (
        "secrets",
        "db_password.txt",
    )
    for name in ("db", "worker"):
        # Rule: the db password secret is used by db and worker, at /run/secrets/db_password.
        assert secret_mounts(svc[name]).get("db_password") == SECRET_PATH, name
    # Rule: postgres reads the password from the secret (POSTGRES_PASSWORD_FILE).
    assert environment(svc["db"]).get("POSTGRES_PASSWORD_FILE") == SECRET_PATH
    # Rule: no plain-text password in db's environment.
    assert "POSTGRES_PASSWORD" not in environment(svc["db"])
    worker_env = environment(svc["worker"])
    # Rule: worker reads the password from the secret (SEARCH_STORAGE_PASSWORD_FILE).
    assert worker_env.get("SEARCH_STORAGE_PASSWORD_FILE") == SECRET_PATH
    # Rule: worker's storage URL names the db service and carries no password.
    url = urlsplit(worker_env["SEARCH_STORAGE"])
    assert (url.scheme, url.hostname, url.password) == ("postgresql+psycopg", "db", None)


def test_create_runs_once_after_db_is_healthy(config: dict[str, Any]) -> None:
    """`create` is a one-shot `search create` of the default study."""
    create = services(config)["create"]
    # Rule: create runs `search create studies/conv.toml` by default.
    assert argv(create) == ["search", "create", "studies/conv.toml"]
    # Rule: create waits for db's healthcheck.
    assert create["depends_on"]["db"]["condition"] == "service_healthy"
    # Rule: create is one-shot (restart: "no").
    assert create.get("restart", "no") == "no"
    # Rule: db has a healthcheck that uses pg_isready (else service_healthy never holds).
    assert "pg_isready" in services(config)["db"]["healthcheck"]["test"]


def test_worker_scales_after_create(config: dict[str, Any]) -> None:
    """`worker` is a scalable `search worker` that starts once the study exists."""
    worker = services(config)["worker"]
    # Rule: worker runs `search worker studies/conv.toml` by default.
    assert argv(worker) == ["search", "worker", "studies/conv.toml"]
    # Rule: worker has no container_name (a fixed name forbids --scale).
    assert "container_name" not in worker
    # Rule: worker waits for create to complete successfully.
    assert worker["depends_on"]["create"]["condition"] == "service_completed_successfully"
    # Rule: worker restarts on failure only (it exits 0 once the budget is spent).
    assert worker["restart"] == "on-failure"
    # Rule: one thread per worker by default.
    assert environment(worker)["SEARCH_THREADS"] == "1"


def test_reaper_fails_dead_workers_trials(config: dict[str, Any]) -> None:
    """`reaper` keeps reaping stale trials, so a study recovers even if every worker died."""
    reaper = services(config)["reaper"]
    # Rule: reaper runs `search reap --every SECONDS` over all studies.
    assert argv(reaper)[:3] == ["search", "reap", "--every"]
    # Rule: reaper starts once the study exists.
    assert reaper["depends_on"]["create"]["condition"] == "service_completed_successfully"


def test_dashboard_listens_on_all_container_interfaces(config: dict[str, Any]) -> None:
    """Inside its container the dashboard must listen on 0.0.0.0 for the published port."""
    # Rule: dashboard runs `search dashboard --host 0.0.0.0 --port 8080`.
    assert argv(services(config)["dashboard"]) == [
        "search",
        "dashboard",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
    ]


def test_study_and_threads_come_from_the_environment(tmp_path: Path) -> None:
    """STUDY selects the study file of create and worker; SEARCH_THREADS the worker threads."""
    svc = services(render(tmp_path, STUDY="studies/mlp.toml", SEARCH_THREADS="4"))
    # Rule: the study file is selectable by env STUDY, for create and worker alike.
    assert argv(svc["create"])[2:] == argv(svc["worker"])[2:] == ["studies/mlp.toml"]
    # Rule: the per-worker thread count is selectable by env SEARCH_THREADS.
    assert environment(svc["worker"])["SEARCH_THREADS"] == "4"


def test_image_runs_search_as_non_root() -> None:
    """The image's entrypoint is `search`, run by a non-root user."""
    users = [
        line.split()[1]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    ]
    # Rule: the image runs as a non-root user (the last USER wins).
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    # Rule: ENTRYPOINT is `search`.
    assert dockerfile_entrypoint() == ["search"]


def test_gpu_workers_get_one_gpu_each_in_the_gpu_profile_only(config: dict[str, Any]) -> None:
    """`--profile gpu` adds one worker per GPU: each reserves its own GPU, none by default."""
    gpu_workers = {
        name: s for name, s in services(config).items() if "gpu" in s.get("profiles", [])
    }
    # Rule: the default services (no profile) reserve no GPU.
    for name, service in services(config).items():
        if name not in gpu_workers:
            assert "deploy" not in service, name
    reserved = []
    for name, service in gpu_workers.items():
        # Rule: a GPU worker is a `search worker` of the same study, from the GPU image.
        assert argv(service) == ["search", "worker", "studies/conv.toml"], name
        assert service["build"]["args"]["GPU"] == "true" and service["image"] == "search:gpu"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        reserved += device["device_ids"]
        # Rule: it takes GPU memory as it needs it, so it never blocks another process.
        assert environment(service)["TF_FORCE_GPU_ALLOW_GROWTH"] == "true", name
        assert service["depends_on"]["create"]["condition"] == "service_completed_successfully"
    # Rule: at least two GPUs, one worker on each.
    assert len(reserved) >= 2 and len(set(reserved)) == len(reserved)
