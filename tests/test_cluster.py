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
4. Hardening (``hardening_violations``, ``network_violations``): every Ray container and the RayJob
   submitter run as the Dockerfile's non-root user with no privilege escalation, no capabilities,
   a seccomp profile, no service account token and bounded ephemeral storage; the head Service is
   ClusterIP and NetworkPolicies admit ingress to the Ray pods only from the same Ray cluster, to
   the head only on its Ray ports. Each rule is shown to fire on a broken copy.
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
    KINDS, ALL_DOCS, POLICIES, POLICY_IDS, EPHEMERAL, CLUSTER_LABEL, dockerfile_user, hardening_violations,
    network_violations, head_ports, pod_labels, selects,
)


# ---------------------------------------------------------------- 1. schema


def test_manifests_exist():
    kinds = sorted(doc.get("kind") for _, doc in DOCS)
    assert kinds == ["RayCluster", "RayJob"], f"cluster/*.yaml should hold a RayCluster and a RayJob, got {kinds}"
    for name, doc in ALL_DOCS:
        kind = doc.get("kind")
        assert kind in KINDS, f"{name}: kind {kind!r} is not checked here; expected one of {sorted(KINDS)}"
        assert doc.get("apiVersion") == KINDS[kind], f"{name}: {kind} should be {KINDS[kind]}"
    assert all(name.startswith("raycluster.yaml#") for name, _ in POLICIES) and POLICIES, \
        "the NetworkPolicies belong beside the RayCluster in raycluster.yaml"


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


@pytest.mark.parametrize("name, doc", POLICIES, ids=POLICY_IDS)
def test_network_policy_matches_schema(name, doc):
    errors = _schema_errors(doc)
    assert not errors, f"{name} is not a valid networking.k8s.io/v1 NetworkPolicy:\n  " + "\n  ".join(errors)
    bad = copy.deepcopy(doc)
    bad["spec"]["ingress"][0]["form"] = bad["spec"]["ingress"][0].pop("from")  # misspelled: admits everyone
    assert any("form" in e for e in _schema_errors(bad))


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
        for key in ("cpu", "memory", EPHEMERAL):
            if key in req or key in lim:
                assert key in req and key in lim and quantity(req[key]) == quantity(lim[key]), \
                    f"{name} {where}: {key} requests {req.get(key)} != limits {lim.get(key)}"
    for where, cspec in _cluster_specs(doc):
        for group_name, group in _groups(cspec):
            lim = (_ray_container(group).get("resources") or {}).get("limits") or {}
            assert "cpu" in lim and "memory" in lim, \
                f"{name} {where}/{group_name}: the Ray container needs cpu and memory limits"
    for where, c in _all_containers(doc):
        res = c.get("resources") or {}
        assert EPHEMERAL in (res.get("requests") or {}) and EPHEMERAL in (res.get("limits") or {}), \
            f"{name} {where}: set {EPHEMERAL} requests and limits (bounds Ray's logs and spilled objects)"


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


# ---------------------------------------------------------------- 4. hardening and network exposure


def _raycluster() -> dict:
    (cluster,) = _by_kind("RayCluster")
    return copy.deepcopy(cluster)


def _policies() -> list[dict]:
    return [copy.deepcopy(doc) for _, doc in POLICIES]


def test_dockerfile_user_is_numeric_non_root():
    uid, gid = dockerfile_user()
    assert uid != 0 and gid != 0
    assert (uid, gid) == (1000, 1000), "the manifests and README assume uid/gid 1000 (KubeRay's convention)"


@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_pods_are_hardened(name, doc):
    errors = hardening_violations(doc)
    assert not errors, f"{name}:\n  " + "\n  ".join(errors)


@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_every_ray_container_has_the_security_settings(name, doc):
    """The same settings spelled out, independent of the rule code."""
    uid, gid = dockerfile_user()
    for where, cspec in _cluster_specs(doc):
        assert not cspec.get("enableInTreeAutoscaling"), "autoscaling on: revisit automountServiceAccountToken"
        for group_name, group in _groups(cspec):
            pod = _pod(group)
            assert pod["automountServiceAccountToken"] is False, f"{name} {where}/{group_name}"
            psc = pod["securityContext"]
            assert (psc["runAsNonRoot"], psc["runAsUser"], psc["runAsGroup"]) == (True, uid, gid)
            assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, f"{name} {where}/{group_name}/{c['name']}"
                assert sc["capabilities"] == {"drop": ["ALL"]}, f"{name} {where}/{group_name}/{c['name']}"
                assert not {"runAsUser", "runAsGroup", "runAsNonRoot", "privileged"} & set(sc), \
                    f"{name} {where}/{group_name}/{c['name']}: keep the user at pod level"
                res = c["resources"]
                assert quantity(res["requests"][EPHEMERAL]) == quantity(res["limits"][EPHEMERAL]) > 0


def test_rayjob_submitter_is_hardened_and_matches_the_head_image():
    spec = _rayjob()["spec"]
    pod = spec["submitterPodTemplate"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (submitter,) = pod["containers"]
    head = _ray_container(spec["rayClusterSpec"]["headGroupSpec"])
    assert submitter["image"] == head["image"], "the submitter's Ray CLI must match the cluster's Ray"
    assert "command" not in submitter, "leave the command to KubeRay (status / submit / follow logs)"
    assert submitter["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_head_network_exposure():
    cluster = _raycluster()
    errors = network_violations(cluster, _policies())
    assert not errors, "\n  ".join(errors)
    head = cluster["spec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    # The ports the issue names are admitted, from this cluster's pods only, and nothing outside
    # the head's Ray ports (ssh, say) is.
    ports = head_ports(cluster["spec"])
    assert {6379, 8265, 10001, 8080} <= ports and 22 not in ports
    head_labels = pod_labels("dlma-ray", "headgroup", head, head=True)
    (policy,) = [p for p in _policies() if selects(p["spec"]["podSelector"], head_labels)]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {CLUSTER_LABEL: "dlma-ray"}}}]
    admitted = {n for p in rule["ports"] for n in range(p["port"], p.get("endPort", p["port"]) + 1)}
    assert admitted == ports
    assert not selects(policy["spec"]["podSelector"], pod_labels("other", "headgroup", head, head=True))
    worker = cluster["spec"]["workerGroupSpecs"][0]
    assert not selects(policy["spec"]["podSelector"], pod_labels("dlma-ray", "gpu-8x", worker, head=False))


def test_rayjob_cluster_keeps_the_head_service_internal():
    head = _rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")


def test_readonly_root_is_allowed_with_a_writable_tmp():
    """The rule does not forbid readOnlyRootFilesystem: it asks for an emptyDir at /tmp with it."""
    job = _rayjob()
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    _ray_container(head)["securityContext"]["readOnlyRootFilesystem"] = True
    assert any("/tmp" in e for e in hardening_violations(job))
    _pod(head)["volumes"].append({"name": "tmp", "emptyDir": {}})
    _ray_container(head)["volumeMounts"].append({"name": "tmp", "mountPath": "/tmp"})
    assert not hardening_violations(job)


def test_autoscaling_head_may_keep_its_token():
    job = _rayjob()
    cspec = job["spec"]["rayClusterSpec"]
    cspec["enableInTreeAutoscaling"] = True
    _pod(cspec["headGroupSpec"]).pop("automountServiceAccountToken")
    assert not hardening_violations(job)
    _pod(cspec["workerGroupSpecs"][0]).pop("automountServiceAccountToken")
    assert any("gpu-8x" in e and "automountServiceAccountToken" in e for e in hardening_violations(job))


def _head_c(**sc):
    def mutate(job):
        c = _ray_container(job["spec"]["rayClusterSpec"]["headGroupSpec"])
        for key, value in sc.items():
            if value is None:
                c["securityContext"].pop(key, None)
            else:
                c["securityContext"][key] = value
        return job
    return mutate


def _worker_pod(**changes):
    def mutate(job):
        pod = _pod(job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])
        for key, value in changes.items():
            if value is None:
                pod.pop(key, None)
            else:
                pod[key] = value
        return job
    return mutate


def _pod_sc(key, value):
    def mutate(job):
        sc = _pod(job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])["securityContext"]
        if value is None:
            sc.pop(key)
        else:
            sc[key] = value
        return job
    return mutate


def _ephemeral(requests, limits):
    def mutate(job):
        res = _ray_container(job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])["resources"]
        for side, value in (("requests", requests), ("limits", limits)):
            if value is None:
                res[side].pop(EPHEMERAL)
            else:
                res[side][EPHEMERAL] = value
        return job
    return mutate


def _submitter(change):
    def mutate(job):
        change(job["spec"])
        return job
    return mutate


BROKEN_HARDENING = [
    pytest.param(_head_c(allowPrivilegeEscalation=None), "allowPrivilegeEscalation", id="escalation-unset"),
    pytest.param(_head_c(allowPrivilegeEscalation=True), "allowPrivilegeEscalation", id="escalation-true"),
    pytest.param(_head_c(capabilities=None), "capabilities", id="capabilities-kept"),
    pytest.param(_head_c(capabilities={"drop": ["ALL"], "add": ["NET_RAW"]}), "capabilities.add", id="capability-added"),
    pytest.param(_head_c(privileged=True), "privileged", id="privileged"),
    pytest.param(_head_c(runAsUser=0), "runAsUser", id="container-runs-as-root"),
    pytest.param(_head_c(runAsNonRoot=False), "runAsNonRoot", id="container-overrides-non-root"),
    pytest.param(_head_c(readOnlyRootFilesystem=True), "/tmp", id="read-only-root-without-tmp"),
    pytest.param(_pod_sc("runAsNonRoot", None), "runAsNonRoot", id="pod-non-root-unset"),
    pytest.param(_pod_sc("runAsGroup", 0), "runAsGroup", id="pod-group-root"),
    pytest.param(_pod_sc("runAsUser", 1001), "runAsUser", id="uid-not-the-dockerfile-user"),
    pytest.param(_pod_sc("seccompProfile", None), "seccompProfile", id="no-seccomp"),
    pytest.param(_pod_sc("seccompProfile", {"type": "Unconfined"}), "seccompProfile", id="seccomp-unconfined"),
    pytest.param(_worker_pod(automountServiceAccountToken=None), "automountServiceAccountToken", id="token-default"),
    pytest.param(_worker_pod(automountServiceAccountToken=True), "automountServiceAccountToken", id="token-on"),
    pytest.param(_ephemeral("64Gi", None), EPHEMERAL, id="ephemeral-no-limit"),
    pytest.param(_ephemeral(None, None), EPHEMERAL, id="ephemeral-missing"),
    pytest.param(_ephemeral("64Gi", "128Gi"), "requests 64Gi != limits 128Gi", id="ephemeral-request-below-limit"),
    pytest.param(_submitter(lambda s: s.pop("submitterPodTemplate")), "submitterPodTemplate", id="default-submitter"),
    pytest.param(_submitter(lambda s: s["submitterPodTemplate"]["spec"].pop("automountServiceAccountToken")),
                 "submitterPodTemplate: automountServiceAccountToken", id="submitter-token"),
    pytest.param(_submitter(lambda s: s["submitterPodTemplate"]["spec"]["containers"][0]["securityContext"]
                            .update(capabilities={})), "submitterPodTemplate/ray-job-submitter: capabilities",
                 id="submitter-capabilities"),
    pytest.param(_submitter(lambda s: s["submitterPodTemplate"]["spec"].pop("securityContext")),
                 "submitterPodTemplate/ray-job-submitter: runAsNonRoot", id="submitter-root"),
]


@pytest.mark.parametrize("mutate, expected", BROKEN_HARDENING)
def test_hardening_rules_catch_broken_copies(mutate, expected):
    errors = hardening_violations(mutate(_rayjob()))
    assert any(expected in e for e in errors), f"expected a violation mentioning {expected!r}, got {errors}"


def _net(change):
    """A mutation of (RayCluster, [head policy, worker policy, ...]) by name."""
    def mutate():
        cluster, policies = _raycluster(), _policies()
        by_name = {p["metadata"]["name"]: p for p in policies}
        change(cluster, by_name, policies)
        return cluster, policies
    return mutate


def _head_rule(cluster, by_name, policies):
    return by_name["dlma-ray-head"]["spec"]["ingress"][0]


BROKEN_NETWORK = [
    pytest.param(_net(lambda c, b, p: c["spec"]["headGroupSpec"].update(serviceType="LoadBalancer")),
                 "LoadBalancer", id="load-balancer"),
    pytest.param(_net(lambda c, b, p: c["spec"]["headGroupSpec"].update(headService={"spec": {"type": "NodePort"}})),
                 "NodePort", id="node-port"),
    pytest.param(_net(lambda c, b, p: c["spec"]["headGroupSpec"].update(enableIngress=True)),
                 "enableIngress", id="ingress"),
    pytest.param(_net(lambda c, b, p: c["spec"]["headGroupSpec"]["rayStartParams"].pop("object-manager-port")),
                 "pin object-manager-port", id="object-manager-port-random"),
    pytest.param(_net(lambda c, b, p: p.remove(b["dlma-ray-head"])), "selects the head", id="no-head-policy"),
    pytest.param(_net(lambda c, b, p: p.remove(b["dlma-ray-workers"])), "worker group gpu-8x", id="no-worker-policy"),
    pytest.param(_net(lambda c, b, p: _head_rule(c, b, p).pop("from")), "every source", id="head-from-anyone"),
    pytest.param(_net(lambda c, b, p: b["dlma-ray-workers"]["spec"]["ingress"][0].pop("from")), "every source",
                 id="workers-from-anyone"),
    pytest.param(_net(lambda c, b, p: _head_rule(c, b, p)["from"][0].update(namespaceSelector={})),
                 "namespaceSelector", id="peer-any-namespace"),
    pytest.param(_net(lambda c, b, p: _head_rule(c, b, p)["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})),
                 "ipBlock", id="peer-internet"),
    pytest.param(_net(lambda c, b, p: _head_rule(c, b, p)["from"][0]["podSelector"].update(matchLabels={"app": "x"})),
                 "peers must select ray.io/cluster: dlma-ray", id="peer-other-pods"),
    pytest.param(_net(lambda c, b, p: _head_rule(c, b, p)["from"][0]["podSelector"].update(matchLabels={})),
                 "peers must select ray.io/cluster: dlma-ray", id="peer-whole-namespace"),
    pytest.param(_net(lambda c, b, p: b["dlma-ray-workers"]["spec"]["podSelector"]["matchLabels"].pop("ray.io/node-type")),
                 "no `ports`", id="worker-policy-also-opens-the-head"),
    pytest.param(_net(lambda c, b, p: b["dlma-ray-head"]["spec"]["podSelector"]["matchLabels"].update(
        {"ray.io/cluster": "other"})), "podSelector must match", id="head-policy-other-cluster"),
    pytest.param(_net(lambda c, b, p: _head_rule(c, b, p).pop("ports")), "every port is open", id="head-all-ports"),
    pytest.param(_net(lambda c, b, p: _head_rule(c, b, p)["ports"].append({"protocol": "TCP", "port": 22})),
                 "does not serve: 22", id="extra-port"),
    pytest.param(_net(lambda c, b, p: _head_rule(c, b, p)["ports"].pop(5)), "blocks Ray ports of the head: 6381",
                 id="missing-object-manager-port"),
    pytest.param(_net(lambda c, b, p: _head_rule(c, b, p)["ports"][-1].pop("endPort")), "10003-19999",
                 id="worker-range-cut"),
    pytest.param(_net(lambda c, b, p: _head_rule(c, b, p)["ports"][1].update(port="dashboard")), "named ports",
                 id="named-port"),
]


@pytest.mark.parametrize("mutate, expected", BROKEN_NETWORK)
def test_network_rules_catch_broken_copies(mutate, expected):
    errors = network_violations(*mutate())
    assert any(expected in e for e in errors), f"expected a violation mentioning {expected!r}, got {errors}"
