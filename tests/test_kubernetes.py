"""`search submit kubernetes`: manifests valid against Kubernetes' published schemas (offline,
kubernetes-validate's copies, strict: no unknown field), whose worker pods run the study."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from search.cli import main
from search.kubernetes import KubernetesStudy, render_manifests

# The oldest Kubernetes the manifests are checked against (podFailurePolicy is GA in 1.31).
KUBERNETES_VERSION = "1.31.0"


@pytest.fixture(autouse=True)
def _no_storage_settings(monkeypatch):
    for name in ("SEARCH_STORAGE", "SEARCH_STORAGE_PASSWORD_FILE", "SEARCH_CHECKPOINTS"):
        monkeypatch.delenv(name, raising=False)


def submit(capsys, *args: str) -> tuple[int, list[dict], str]:
    code = main(["submit", "kubernetes", *map(str, args)])
    out, err = capsys.readouterr()
    return code, [m for m in yaml.safe_load_all(out) if m] if code == 0 else [], err


def by_kind(manifests: list[dict]) -> dict[tuple[str, str], dict]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def test_manifests_with_their_own_database_pass_the_schemas(write_study, capsys):
    study = write_study(name="conv_v2")
    code, manifests, err = submit(
        capsys, study, "--workers", 3, "--cpus-per-task", 2, "--gpus-per-task", 1,
        "--memory", "8Gi", "--image", "registry.example.org/search:1",
    )  # fmt: skip
    assert code == 0, err
    for manifest in manifests:
        # Raises with the offending field when a manifest breaks its kind's schema.
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    objects = by_kind(manifests)
    # Object names are DNS labels made from the study's name.
    assert set(objects) == {
        ("ConfigMap", "search-conv-v2-study"),
        ("Service", "search-conv-v2-db"),
        ("StatefulSet", "search-conv-v2-db"),
        ("PersistentVolumeClaim", "search-conv-v2-runs"),
        ("Job", "search-conv-v2-create"),
        ("Job", "search-conv-v2-workers"),
        ("Deployment", "search-conv-v2-dashboard"),
    }
    # No Secret: it holds the database's password, made by hand (the header says how).
    job = objects["Job", "search-conv-v2-workers"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == 3
    pod = job["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["image"] == "registry.example.org/search:1"
    assert worker["command"] == ["search", "worker", "--study-name", "conv_v2", "--threads", "2"]
    assert worker["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
    }
    env = {e["name"]: e for e in worker["env"]}
    # The storage URL from the Secret, never in the manifest.
    assert env["SEARCH_STORAGE"]["valueFrom"] == {
        "secretKeyRef": {"name": "search-conv-v2-storage", "key": "url"}
    }
    # A failed pod is replaced by the Job, not restarted in place: the Job's failure policy
    # (a bad definition fails it; an evicted pod does not count) needs restartPolicy Never.
    assert pod["restartPolicy"] == "Never"
    rules = {r["action"]: r for r in job["podFailurePolicy"]["rules"]}
    assert rules["FailJob"]["onExitCodes"]["values"] == [2]
    assert rules["Ignore"]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    # Checkpoints in the volume all workers share, where the image's runs/ is.
    assert {"name": "runs", "mountPath": "/app/runs"} in worker["volumeMounts"]
    # The database's password comes from the same Secret.
    db = objects["StatefulSet", "search-conv-v2-db"]["spec"]["template"]["spec"]["containers"][0]
    assert {
        "name": "POSTGRES_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "search-conv-v2-storage", "key": "password"}},
    } in db["env"]
    # The dashboard keeps its default host 127.0.0.1: reached by kubectl port-forward only.
    dashboard = objects["Deployment", "search-conv-v2-dashboard"]["spec"]["template"]["spec"]
    assert dashboard["containers"][0]["command"] == ["search", "dashboard", "--port", "8080"]
    # The study is created once, from the study file in the ConfigMap.
    create = objects["Job", "search-conv-v2-create"]["spec"]["template"]["spec"]
    assert create["containers"][0]["command"] == ["search", "create", "/etc/search/study.toml"]
    assert objects["ConfigMap", "search-conv-v2-study"]["data"]["study.toml"] == study.read_text()


def test_an_external_database_and_s3_checkpoints(write_study, capsys):
    url = "postgresql+psycopg://search:pw@db.example.org:5432/search"
    code, manifests, err = submit(
        capsys, write_study(), "--workers", 2, "--storage", url, "--checkpoints", "s3://b/p",
        "--namespace", "ml",
    )  # fmt: skip
    assert code == 0, err
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        assert manifest["metadata"]["namespace"] == "ml"
    objects = by_kind(manifests)
    # The given URL is the Secret; no database and no volume are rendered.
    assert objects["Secret", "search-t-storage"]["stringData"] == {"url": url}
    assert {kind for kind, _ in objects} == {"ConfigMap", "Secret", "Job", "Deployment"}
    worker = objects["Job", "search-t-workers"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "SEARCH_CHECKPOINTS", "value": "s3://b/p"} in worker["env"]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "8GB"], "--memory '8GB': give a Kubernetes quantity"),
        (["--storage", "sqlite:///x.db"], "pods share a study through a database server only"),
        (["--checkpoints", "runs"], "checkpoints 'runs': a folder here is not in the pods"),
    ],
)
def test_bad_input_exits_2_naming_the_value_and_the_rule(write_study, capsys, args, message):
    code, _, err = submit(capsys, write_study(), "--workers", 1, *args)
    assert code == 2 and message in err, err


def test_a_study_name_kubernetes_cannot_take_is_refused():
    with pytest.raises(ValueError, match="'search-über', but .* must be at most 47"):
        KubernetesStudy(study_name="über", study_text="", n_workers=1)
    # Within the limit, the name is usable as it is.
    assert render_manifests(KubernetesStudy(study_name="x", study_text="", n_workers=1))
