"""Kubernetes manifests that run a study: its database, its workers and its dashboard.

- The study file, as a ConfigMap; a one-shot Job runs `search create` on it (the study is
  created once, before any worker opens it).
- The storage URL from a Secret (key `url`): rendered from --storage for an external
  database; else the manifests run PostgreSQL (a StatefulSet and its Service) and the Secret,
  with its `password` and `url`, is created by hand first, so no password is in the
  manifests and rendering them again changes nothing.
- The workers: an Indexed Job of N pods, each one `search worker` with its CPU, memory and
  GPU requests. A pod that fails is replaced (up to the Job's backoff limit), one evicted or
  preempted (a drained or lost node) is replaced without counting, and one that exits 2 (a
  bad definition) fails the Job. A replaced worker's trial is failed after the grace period
  and goes on from its checkpoint: in a ReadWriteMany volume that all pods mount, or S3.
- The dashboard, a Deployment listening on 127.0.0.1 in its pod: only
  `kubectl port-forward` reaches it (it has no authentication).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

# A DNS label, as Kubernetes names objects; short enough for a worker pod's hostname
# (<job>-<index>) and the Job's own suffixes to stay within 63 characters.
NAME_FORMAT = re.compile(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?")
# Kubernetes quantities: "500m", "2", "4Gi", "1.5G".
QUANTITY = re.compile(r"\d+(\.\d+)?([numkMGTPE]|[KMGTPE]i)?")
# The Dockerfile's working directory and user: the volume of checkpoints is mounted where
# the default location (runs/) is, and writable by that user's group.
WORKDIR, USER_ID = "/app", 10001
STUDY_MOUNT = "/etc/search"
GPU_RESOURCE = "nvidia.com/gpu"
# Seconds a stopped worker has to finish its batch and queue its trial again.
GRACE_SECONDS = 60
# Failed worker pods replaced per worker before the Job gives up.
RETRIES_PER_WORKER = 3


class ManifestError(ValueError):
    """Manifests that cannot be rendered; the message names the value and the rule."""


@dataclass(frozen=True)
class KubernetesStudy:
    """A study's workers on Kubernetes: what goes into its manifests.

    Args:
        study_text: the study file, mounted into the pods.
        storage_url: an external database's URL (rendered into a Secret); None runs
            PostgreSQL in the cluster, with the Secret made by hand.
        checkpoints: s3://... for the checkpoints; None keeps them in a ReadWriteMany volume.
        worker_args: more `search worker` flags (--cache, --mixed-precision).
    """

    study_name: str
    study_text: str
    n_workers: int
    image: str = "search:latest"
    namespace: str | None = None
    cpus: int = 1
    memory: str = "4Gi"
    gpus: int | None = None
    storage_url: str | None = None
    checkpoints: str | None = None
    volume_size: str = "10Gi"
    worker_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.n_workers < 1:
            raise ManifestError(f"--workers is {self.n_workers}, but must be >= 1")
        if not NAME_FORMAT.fullmatch(self.name):
            raise ManifestError(
                f"study name {self.study_name!r} makes the object name {self.name!r}, but"
                " Kubernetes names (lower case, '_' and '.' as '-') must be at most 47"
                " letters, digits and '-', starting and ending with a letter or digit"
            )
        if not QUANTITY.fullmatch(self.memory):
            raise ManifestError(
                f"--memory {self.memory!r}: give a Kubernetes quantity, as in 4Gi or 512Mi"
            )
        if self.storage_url is not None and self.storage_url.startswith("sqlite"):
            raise ManifestError(
                f"storage {self.storage_url}: pods share a study through a database server"
                " only; give a PostgreSQL URL, or none to run PostgreSQL in the cluster"
            )

    @property
    def name(self) -> str:
        """The prefix of every object's name: search-<study>."""
        return "search-" + re.sub(r"[_.]", "-", self.study_name.lower())

    @property
    def storage_secret(self) -> str:
        return f"{self.name}-storage"


def render_manifests(study: KubernetesStudy) -> list[dict[str, Any]]:
    """The manifests, in the order `kubectl apply` should create them."""
    manifests = [_config_map(study)]
    if study.storage_url is not None:
        manifests.append(_storage_secret(study))
    else:
        manifests += _database(study)
    if study.checkpoints is None:
        manifests.append(_volume_claim(study))
    manifests += [_create_job(study), _workers_job(study), _dashboard(study)]
    for manifest in manifests:
        if study.namespace:
            manifest["metadata"]["namespace"] = study.namespace
    return manifests


def dump_manifests(study: KubernetesStudy) -> str:
    """The manifests as one YAML stream, with a header saying how to use them."""
    lines = [
        f"# Study {study.study_name!r} on Kubernetes, written by `search submit kubernetes`.",
        "# Not run on a real cluster by this project's tests: validated against Kubernetes'",
        "# schemas only. Build and push the image (Dockerfile) first.",
    ]
    if study.storage_url is None:
        lines += [
            "# First, once, the database's password and URL (kept out of this file):",
            "#   PASSWORD=$(openssl rand -hex 24)",
            f"#   kubectl create secret generic {study.storage_secret}"
            " --from-literal=password=$PASSWORD \\",
            f"#     --from-literal=url=postgresql+psycopg://search:$PASSWORD@{study.name}-db"
            ":5432/search",
        ]
    lines += [
        "# Then: kubectl apply -f THIS_FILE",
        f"#   kubectl logs -f job/{study.name}-workers       (one worker's log)",
        f"#   kubectl port-forward deployment/{study.name}-dashboard 8080:8080",
        "#   then open http://127.0.0.1:8080/dashboard",
    ]
    body = yaml.safe_dump_all(render_manifests(study), sort_keys=False)
    return "\n".join(lines) + "\n---\n" + body


def _metadata(study: KubernetesStudy, suffix: str, component: str) -> dict[str, Any]:
    return {"name": f"{study.name}-{suffix}", "labels": _labels(study, component)}


def _labels(study: KubernetesStudy, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "search",
        "app.kubernetes.io/instance": study.name,
        "app.kubernetes.io/component": component,
    }


def _config_map(study: KubernetesStudy) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(study, "study", "study"),
        "data": {"study.toml": study.study_text},
    }


def _storage_secret(study: KubernetesStudy) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": study.storage_secret, "labels": _labels(study, "storage")},
        "type": "Opaque",
        "stringData": {"url": study.storage_url},
    }


def _secret_env(study: KubernetesStudy, name: str, key: str) -> dict[str, Any]:
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": study.storage_secret, "key": key}},
    }


def _database(study: KubernetesStudy) -> list[dict[str, Any]]:
    labels = _labels(study, "database")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(study, "db", "database"),
        "spec": {"selector": labels, "ports": [{"name": "postgres", "port": 5432}]},
    }
    container = {
        "name": "postgres",
        "image": "postgres:16",
        # Headroom over the default 100: each worker holds a small pool of connections.
        "args": ["-c", "max_connections=200"],
        "env": [
            {"name": "POSTGRES_USER", "value": "search"},
            {"name": "POSTGRES_DB", "value": "search"},
            _secret_env(study, "POSTGRES_PASSWORD", "password"),
            # A subdirectory: the volume's root may hold lost+found, which initdb refuses.
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
        ],
        "ports": [{"containerPort": 5432, "name": "postgres"}],
        "readinessProbe": {
            "exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", "search"]},
            "periodSeconds": 5,
        },
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
    }
    stateful_set = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(study, "db", "database"),
        "spec": {
            "serviceName": f"{study.name}-db",
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": study.volume_size}},
                    },
                }
            ],
        },
    }
    return [service, stateful_set]


def _volume_claim(study: KubernetesStudy) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(study, "runs", "checkpoints"),
        "spec": {
            # Every worker pod, on any node, reads and writes the checkpoints.
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": study.volume_size}},
        },
    }


def _pod_spec(
    study: KubernetesStudy, container: dict[str, Any], *, restart: str
) -> dict[str, Any]:
    """A pod of the search image with the storage URL and the checkpoints."""
    env = [_secret_env(study, "SEARCH_STORAGE", "url"), {"name": "PYTHONUNBUFFERED", "value": "1"}]
    mounts, volumes = [], []
    if study.checkpoints is not None:
        env.append({"name": "SEARCH_CHECKPOINTS", "value": study.checkpoints})
    else:
        mounts.append({"name": "runs", "mountPath": f"{WORKDIR}/runs"})
        volumes.append(
            {"name": "runs", "persistentVolumeClaim": {"claimName": f"{study.name}-runs"}}
        )
    container = container | {
        "image": study.image,
        "env": env + container.get("env", []),
        "volumeMounts": mounts + container.get("volumeMounts", []),
    }
    return {
        "restartPolicy": restart,
        # The image's user writes the volume of checkpoints through its group.
        "securityContext": {"runAsUser": USER_ID, "runAsGroup": USER_ID, "fsGroup": USER_ID},
        "containers": [container],
        "volumes": volumes,
    }


def _wait_for_study(study: KubernetesStudy) -> dict[str, Any]:
    """An init container that waits until the create Job has made the study.

    Only that Job creates the storage's tables: two processes must not do it at once.
    """
    return {
        "name": "wait-for-study",
        "image": study.image,
        "command": [
            "sh",
            "-c",
            f"until search status --study-name {study.study_name} >/dev/null 2>&1;"
            " do sleep 5; done",
        ],
        "env": [_secret_env(study, "SEARCH_STORAGE", "url")],
    }


def _create_job(study: KubernetesStudy) -> dict[str, Any]:
    container = {
        "name": "create",
        "command": ["search", "create", f"{STUDY_MOUNT}/study.toml"],
        "volumeMounts": [{"name": "study", "mountPath": STUDY_MOUNT, "readOnly": True}],
    }
    pod = _pod_spec(study, container, restart="OnFailure")
    pod["volumes"].append({"name": "study", "configMap": {"name": f"{study.name}-study"}})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(study, "create", "create"),
        "spec": {
            # Retried while the database starts.
            "backoffLimit": 10,
            "template": {
                "metadata": {"labels": _labels(study, "create")},
                "spec": pod,
            },
        },
    }


def _workers_job(study: KubernetesStudy) -> dict[str, Any]:
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": str(study.cpus), "memory": study.memory},
        "limits": {"cpu": str(study.cpus), "memory": study.memory},
    }
    env = []
    if study.gpus:
        resources["limits"][GPU_RESOURCE] = str(study.gpus)
        env.append({"name": "TF_FORCE_GPU_ALLOW_GROWTH", "value": "true"})
    worker = {
        "name": "worker",
        # No --worker-index: each pod, a replacement too, seeds its sampler afresh.
        "command": [
            "search",
            "worker",
            "--study-name",
            study.study_name,
            "--threads",
            str(study.cpus),
            *study.worker_args,
        ],
        "env": env,
        "resources": resources,
    }
    pod = _pod_spec(study, worker, restart="Never")
    pod["initContainers"] = [_wait_for_study(study)]
    pod["terminationGracePeriodSeconds"] = GRACE_SECONDS
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(study, "workers", "worker"),
        "spec": {
            "completionMode": "Indexed",
            "completions": study.n_workers,
            "parallelism": study.n_workers,
            "backoffLimit": RETRIES_PER_WORKER * study.n_workers,
            "podFailurePolicy": {
                "rules": [
                    # Evicted, preempted or its node lost: replaced without counting.
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                    # A definition the worker cannot run: replacing it would fail again.
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "worker",
                            "operator": "In",
                            "values": [2],
                        },
                    },
                ]
            },
            "template": {"metadata": {"labels": _labels(study, "worker")}, "spec": pod},
        },
    }


def _dashboard(study: KubernetesStudy) -> dict[str, Any]:
    labels = _labels(study, "dashboard")
    container = {
        "name": "dashboard",
        # 127.0.0.1 (the default): kubectl port-forward connects inside the pod; no Service
        # or other pod reaches a dashboard that has no authentication.
        "command": ["search", "dashboard", "--port", "8080"],
        "ports": [{"containerPort": 8080, "name": "http"}],
    }
    pod = _pod_spec(study, container, restart="Always")
    pod["initContainers"] = [_wait_for_study(study)]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(study, "dashboard", "dashboard"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": pod,
            },
        },
    }
