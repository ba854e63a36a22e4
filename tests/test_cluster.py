"""Kubernetes deployment files: cluster/*.yaml, cluster/Dockerfile and jobs/configs/*.yaml.

Three layers, all offline and fast:

1. Schema: every manifest validates strictly (``additionalProperties: false``) against KubeRay's v1
   CRD JSON schema of its ``kind``, from ``shared/kuberay`` beside the repo (skipped when absent).
2. Operator rules the schema cannot express (what KubeRay's validation rejects at run time):
   ``operator_violations`` implements them, the shipped manifests must have none, and every rule is
   shown to fire on a broken copy so the checker is not vacuous.
3. Project rules: Ray version = the Dockerfile's pin, requests = limits, no GPU on the head,
   /dev/shm and the run volume in every Ray container, token auth from a Secret, no literal
   secrets, the entrypoint's config validates and fits the cluster, the job configs validate.
"""

from __future__ import annotations

import copy
import re
import shlex
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from dlma_ray.config import load_config

from kuberay_rules import (  # noqa: E402 - shared checking code, kept apart to keep files short
    REPO, KUBERAY, CLUSTER, MANIFESTS, JOB_CONFIGS, SCHEMA_FILES, needs_schemas, SUBMISSION_MODES, SECRET_NAME, GPU, _load_manifests, DOCS, DOC_IDS, _by_kind, _validator, _schema_errors, _cluster_specs, _groups, _pod, _ray_container, _all_containers, _env_lists, _env, _QUANTITY, _SUFFIX, quantity, _version, _DNS1035, _cluster_spec_violations, operator_violations,
)


# ---------------------------------------------------------------- 1. schema


def test_manifests_exist():
    kinds = sorted(doc.get("kind") for _, doc in DOCS)
    assert kinds == ["RayCluster", "RayJob"], f"cluster/*.yaml should hold a RayCluster and a RayJob, got {kinds}"
    for _, doc in DOCS:
        assert doc.get("apiVersion") == "ray.io/v1"


@needs_schemas
@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_manifest_matches_kuberay_schema(name, doc):
    errors = _schema_errors(doc)
    assert not errors, f"{name} does not match the KubeRay {doc.get('kind')} schema:\n  " + "\n  ".join(errors)


@needs_schemas
@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_schema_rejects_unknown_fields(name, doc):
    """additionalProperties: false holds at the spec and deep inside a container."""
    bad = copy.deepcopy(doc)
    bad["spec"]["shutdownAfterJobFinish"] = True  # misspelled
    assert any("shutdownAfterJobFinish" in e for e in _schema_errors(bad))

    bad = copy.deepcopy(doc)
    _, cspec = _cluster_specs(bad)[0]
    _ray_container(cspec["workerGroupSpecs"][0])["resource"] = {"limits": {"cpu": "1"}}  # not `resources`
    assert any("resource" in e for e in _schema_errors(bad))

    bad = copy.deepcopy(doc)
    _, cspec = _cluster_specs(bad)[0]
    cspec["authOptions"]["tokenValue"] = "x"
    assert _schema_errors(bad)


# ---------------------------------------------------------------- 2. operator rules


@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_manifest_passes_operator_rules(name, doc):
    errors = operator_violations(doc)
    assert not errors, f"{name} breaks KubeRay run-time rules:\n  " + "\n  ".join(errors)


def _rayjob() -> dict:
    (job,) = _by_kind("RayJob")
    return copy.deepcopy(job)


def _set(spec_changes: dict, cluster_changes: dict | None = None):
    def mutate(job):
        job["spec"].update(spec_changes)
        if cluster_changes:
            job["spec"]["rayClusterSpec"].update(cluster_changes)
        return job
    return mutate


def _worker(**changes):
    def mutate(job):
        group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
        for key, value in changes.items():
            if key == "num_gpus_param":
                group["rayStartParams"]["num-gpus"] = value
            else:
                group[key] = value
        return job
    return mutate


BROKEN_COPIES = [
    pytest.param(_set({"submissionMode": "K8sJob"}), "submissionMode", id="unknown-submission-mode"),
    pytest.param(_set({"submissionMode": "k8sjobmode"}), "submissionMode", id="submission-mode-case"),
    pytest.param(_set({"suspend": True, "shutdownAfterJobFinishes": False, "ttlSecondsAfterFinished": 0}),
                 "suspend", id="suspend-without-shutdown"),
    pytest.param(_set({"shutdownAfterJobFinishes": False}), "ttlSecondsAfterFinished", id="ttl-without-shutdown"),
    pytest.param(_set({"backoffLimit": -1}), "backoffLimit", id="negative-backoff"),
    pytest.param(_set({"backoffLimit": 1, "clusterSelector": {"ray.io/cluster": "dlma-ray"}}), "clusterSelector",
                 id="backoff-with-cluster-selector"),
    pytest.param(_set({"backoffLimit": 2, "submissionMode": "InteractiveMode"}), "InteractiveMode",
                 id="backoff-in-interactive-mode"),
    pytest.param(_set({"submissionMode": "SidecarMode"}), "submitterConfig", id="sidecar-with-submitter-config"),
    pytest.param(_set({"runtimeEnvYAML": "working_dir: [unclosed"}), "runtimeEnvYAML", id="runtime-env-not-yaml"),
    pytest.param(_set({"runtimeEnvYAML": "- just\n- a list\n"}), "mapping", id="runtime-env-not-a-mapping"),
    pytest.param(_set({"activeDeadlineSeconds": 0}), "activeDeadlineSeconds", id="zero-deadline"),
    pytest.param(_set({"rayClusterSpec": None}), "rayClusterSpec or clusterSelector", id="no-cluster"),
    pytest.param(_set({}, {"rayVersion": "2.51.0"}), "2.52.0", id="token-auth-on-old-ray"),
    pytest.param(_worker(minReplicas=2), "minReplicas", id="min-above-max"),
    pytest.param(_worker(maxReplicas=None), "minReplicas and maxReplicas", id="max-missing"),
    pytest.param(_worker(resources={"GPU": "8"}, num_gpus_param="8"), "rayStartParams",
                 id="resources-in-two-places"),
]


@pytest.mark.parametrize("mutate, expected", BROKEN_COPIES)
def test_operator_rules_catch_broken_copies(mutate, expected):
    errors = operator_violations(mutate(_rayjob()))
    assert any(expected in e for e in errors), f"expected a violation mentioning {expected!r}, got {errors}"


# ---------------------------------------------------------------- 3. project rules


def _runtime_env(job: dict) -> dict:
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert isinstance(env, dict), "runtimeEnvYAML must parse into a mapping"
    return env


def test_rayjob_submission_lifecycle_is_deliberate():
    spec = _rayjob()["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] == 0, "the job resumes from its run dir; no automatic cluster-recreating retry"
    assert spec["activeDeadlineSeconds"] > 0
    assert not spec.get("suspend", False)


def test_runtime_env_keeps_git_runs_and_venv_out_of_the_upload():
    env = _runtime_env(_rayjob())
    assert env.get("working_dir"), "runtimeEnvYAML should set working_dir"
    excludes = {e.strip("/") for e in env.get("excludes") or []}
    missing = {".git", "runs", ".venv"} - excludes
    assert not missing, f"runtimeEnvYAML excludes should cover {sorted(missing)}; has {sorted(excludes)}"
    for key, value in (env.get("env_vars") or {}).items():
        assert isinstance(value, str), f"env_vars.{key}: Ray wants string values"
        assert not SECRET_NAME.search(key), f"env_vars.{key}: secrets belong in a Secret, not runtimeEnvYAML"


def _dockerfile_ray_version() -> str:
    text = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    args = dict(re.findall(r"^\s*ARG\s+(\w+)=(\S+)", text, re.MULTILINE))
    text = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)
    pins = set(re.findall(r"\bray\[[^\]]*\]==([0-9][0-9A-Za-z.]*)", text))
    assert len(pins) == 1, f"cluster/Dockerfile should pin ray[...]==X.Y.Z exactly once, found {sorted(pins)}"
    return pins.pop()


def test_dockerfile_builds_on_vllm_as_non_root():
    text = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM\s+vllm/vllm-openai:", text, re.MULTILINE), "base image should be vllm/vllm-openai"
    assert re.search(r"^WORKDIR\s+/app\s*$", text, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    assert re.search(r"\.\[gpu\]", text), "install the package with its gpu extra"
    assert "deepspeed" in text
    ignored = {line.strip().strip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", "runs", ".venv"} <= ignored


@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_ray_version_matches_dockerfile(name, doc):
    pinned = _dockerfile_ray_version()
    for where, cspec in _cluster_specs(doc):
        assert cspec.get("rayVersion") == pinned, f"{name} {where}.rayVersion != Ray {pinned} in cluster/Dockerfile"


@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_requests_equal_limits(name, doc):
    for where, c in _all_containers(doc):
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if GPU in req or GPU in lim:
            assert GPU in req and GPU in lim and quantity(req[GPU]) == quantity(lim[GPU]), \
                f"{name} {where}: {GPU} requests must equal limits"
        for key in ("cpu", "memory"):
            if key in req or key in lim:
                assert key in req and key in lim and quantity(req[key]) == quantity(lim[key]), \
                    f"{name} {where}: {key} requests {req.get(key)} != limits {lim.get(key)}"
    for where, cspec in _cluster_specs(doc):
        for group_name, group in _groups(cspec):
            lim = (_ray_container(group).get("resources") or {}).get("limits") or {}
            assert "cpu" in lim and "memory" in lim, \
                f"{name} {where}/{group_name}: the Ray container needs cpu and memory limits"


@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_head_has_no_gpu_and_workers_have_eight(name, doc):
    for where, cspec in _cluster_specs(doc):
        head = cspec["headGroupSpec"]
        assert head["rayStartParams"].get("num-gpus") == "0", f"{name} {where}: head needs num-gpus '0'"
        assert head["rayStartParams"].get("dashboard-host") == "0.0.0.0"
        for c in _pod(head).get("containers") or []:
            res = c.get("resources") or {}
            assert GPU not in (res.get("requests") or {}) and GPU not in (res.get("limits") or {}), \
                f"{name} {where}: head container {c.get('name')} must not request a GPU"
        workers = cspec["workerGroupSpecs"]
        assert any(quantity(_ray_container(g)["resources"]["limits"].get(GPU, 0)) == 8 for g in workers), \
            f"{name} {where}: expected an 8-GPU worker group"


@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_every_ray_container_mounts_shm_and_the_run_volume(name, doc):
    for where, cspec in _cluster_specs(doc):
        for group_name, group in _groups(cspec):
            volumes = {v["name"]: v for v in _pod(group).get("volumes") or []}
            mounts = {m["mountPath"]: m["name"] for m in _ray_container(group).get("volumeMounts") or []}
            label = f"{name} {where}/{group_name}"
            assert "/dev/shm" in mounts, f"{label}: the Ray container must mount /dev/shm"
            shm = volumes[mounts["/dev/shm"]]
            assert (shm.get("emptyDir") or {}).get("medium") == "Memory", f"{label}: /dev/shm must be a Memory emptyDir"
            assert "/mnt/runs" in mounts, f"{label}: the shared run volume must be mounted at /mnt/runs"
            assert "persistentVolumeClaim" in volumes[mounts["/mnt/runs"]], f"{label}: /mnt/runs must be a PVC"


@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_token_auth_is_on_and_comes_from_a_secret(name, doc):
    for where, cspec in _cluster_specs(doc):
        auth = cspec.get("authOptions") or {}
        assert auth.get("mode") == "token", f"{name} {where}: keep Ray token authentication on"
        secret = auth.get("secretName")
        assert secret, f"{name} {where}: authOptions.secretName should name the pre-created token Secret"
        for group_name, group in _groups(cspec):
            env = _env(_ray_container(group))
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{name} {where}/{group_name}"
            ref = (env.get("RAY_AUTH_TOKEN", {}).get("valueFrom") or {}).get("secretKeyRef") or {}
            assert ref.get("name") == secret and ref.get("key") == "auth_token", \
                f"{name} {where}/{group_name}: RAY_AUTH_TOKEN must come from Secret {secret} key auth_token"


@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_no_literal_secret_values(name, doc):
    for where, env_list in _env_lists(doc):
        for item in env_list:
            if SECRET_NAME.search(item.get("name", "")):
                assert "value" not in item, f"{name} {where}: {item['name']} has a literal value; use valueFrom"
                assert item.get("valueFrom"), f"{name} {where}: {item['name']} must use valueFrom.secretKeyRef"


@pytest.mark.parametrize("env_name, secret", [
    ("RAY_AUTH_TOKEN", True), ("HF_TOKEN", True), ("HUGGING_FACE_HUB_TOKEN", True), ("WANDB_API_KEY", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("AWS_ACCESS_KEY_ID", True), ("REDIS_PASSWORD", True), ("APIKEY", True),
    ("TOKENIZERS_PARALLELISM", False), ("RAY_AUTH_MODE", False), ("HF_HOME", False), ("KEYRING_BACKEND", False),
])
def test_secret_name_pattern(env_name, secret):
    assert bool(SECRET_NAME.search(env_name)) is secret


def test_no_literal_secret_check_catches_a_literal_token():
    job = _rayjob()
    _ray_container(job["spec"]["rayClusterSpec"]["headGroupSpec"])["env"].append({"name": "HF_TOKEN", "value": "hf_x"})
    bad = [(w, i) for w, lst in _env_lists(job) for i in lst if SECRET_NAME.search(i["name"]) and "value" in i]
    assert bad


def test_rayjob_cluster_is_the_raycluster():
    (cluster,) = _by_kind("RayCluster")
    assert _rayjob()["spec"]["rayClusterSpec"] == cluster["spec"], \
        "cluster/rayjob.yaml rayClusterSpec drifted from cluster/raycluster.yaml spec"


def _entrypoint_config(job: dict) -> Path:
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/iterate.py"], f"unexpected entrypoint {argv}"
    assert "--config" in argv, "the entrypoint should name a config with --config"
    path = REPO / argv[argv.index("--config") + 1]
    assert path.is_file(), f"entrypoint config {path} does not exist in the repo"
    return path


def test_entrypoint_config_exists_and_validates():
    cfg = load_config(str(_entrypoint_config(_rayjob())))
    assert cfg.run.dir.startswith("/mnt/runs/"), "run.dir should be on the shared volume mounted at /mnt/runs"
    assert cfg.resources.ray_address == "", "leave ray_address empty: `ray job submit` sets the cluster address"


def _capacity(cspec: dict) -> tuple[Decimal, Decimal]:
    gpus = cpus = Decimal(0)
    for group in cspec["workerGroupSpecs"]:
        lim = _ray_container(group)["resources"]["limits"]
        gpus += quantity(lim.get(GPU, 0)) * group["replicas"]
        cpus += quantity(lim["cpu"]) * group["replicas"]
    return gpus, cpus


def _stage_demands(cfg) -> dict[str, tuple[float, float]]:
    r = cfg.resources
    return {
        "generation": (r.num_engines * r.gpus_per_engine, r.num_engines * r.cpus_per_engine),
        "scoring": (r.num_scorers * r.gpus_per_scorer, r.num_scorers * r.cpus_per_scorer),
        "training": (r.num_train_workers * (1 if r.use_gpu_for_training else 0),
                     r.num_train_workers * r.cpus_per_train_worker),
    }


def _unfit_stages(cfg, cspec) -> list[str]:
    gpus, cpus = _capacity(cspec)
    return [f"{stage}: needs {g:g} GPUs / {c:g} CPUs, the workers have {gpus} / {cpus}"
            for stage, (g, c) in _stage_demands(cfg).items() if g > gpus or c > cpus]


def test_entrypoint_config_fits_the_cluster():
    """Stages run one at a time, so each stage alone must fit on the worker groups."""
    job = _rayjob()
    cfg = load_config(str(_entrypoint_config(job)))
    assert not _unfit_stages(cfg, job["spec"]["rayClusterSpec"])


def test_multinode_config_needs_four_worker_replicas():
    cfg = load_config(str(REPO / "jobs" / "configs" / "paper-7b-pku-multinode.yaml"))
    cspec = _rayjob()["spec"]["rayClusterSpec"]
    assert _unfit_stages(cfg, cspec), "32 GPUs of work should not fit one 8-GPU worker"
    for field in ("replicas", "minReplicas", "maxReplicas"):
        cspec["workerGroupSpecs"][0][field] = 4
    assert not _unfit_stages(cfg, cspec)


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=[p.name for p in JOB_CONFIGS])
def test_job_config_validates(path):
    cfg = load_config(str(path))
    t, r = cfg.train, cfg.resources
    per_step = t.micro_batch_size * r.num_train_workers
    assert t.global_batch_size % per_step == 0, (
        f"{path.name}: train.global_batch_size {t.global_batch_size} is not a multiple of micro_batch_size "
        f"x num_train_workers = {per_step}; the pipeline needs a whole number of accumulation steps")


def test_paper_configs_hold_the_paper_settings():
    for name, workers in (("paper-7b-pku-8gpu.yaml", 8), ("paper-7b-pku-multinode.yaml", 32)):
        cfg = load_config(str(REPO / "jobs" / "configs" / name))
        t, g = cfg.train, cfg.generation
        assert (t.method, t.beta, t.gamma, t.clip_low, t.clip_high) == ("dlma", 0.1, 0.2, -40.0, 40.0)
        assert (t.optimizer, t.lr, t.warmup_steps, t.global_batch_size) == ("rmsprop", 5e-7, 150, 64)
        assert (t.max_length, cfg.data.max_prompt_tokens, t.grad_clip) == (512, 256, 10.0)
        assert (t.zero_stage, t.precision, t.micro_batch_size) == (3, "bf16", 2)
        assert (g.temperature, g.top_p, g.max_new_tokens, g.dtype) == (1.0, 1.0, 200, "bfloat16")
        assert cfg.data.source == "hf:PKU-Alignment/PKU-SafeRLHF" and cfg.pair.name == "harmless"
        assert cfg.rounds.count == 3
        assert cfg.resources.num_train_workers == workers and cfg.resources.use_gpu_for_training
