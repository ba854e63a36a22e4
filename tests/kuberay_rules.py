"""Loading and checking KubeRay manifests: the schema validators and the operator's run-time rules
that the schema cannot express (``operator_violations``). Used by test_cluster.py."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY = Path(__file__).resolve().parents[2] / "shared" / "kuberay"
CLUSTER = REPO / "cluster"
MANIFESTS = sorted(CLUSTER.glob("*.yaml"))
JOB_CONFIGS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
SCHEMA_FILES = {"RayCluster": "raycluster_v1.json", "RayJob": "rayjob_v1.json"}

needs_schemas = pytest.mark.skipif(
    not KUBERAY.is_dir(),
    reason=f"KubeRay CRD schemas not found at {KUBERAY} (shared/kuberay beside the repo); "
    "schema validation needs raycluster_v1.json and rayjob_v1.json",
)

SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
# An env var name one of whose `_`-separated words ends in TOKEN, KEY or SECRET or holds PASSWORD/PASSWD
# (RAY_AUTH_TOKEN, HF_TOKEN, AWS_SECRET_ACCESS_KEY, DB_PASSWORD; not TOKENIZERS_PARALLELISM).
SECRET_NAME = re.compile(r"(?:^|_)(?:[A-Z0-9]*(?:TOKEN|KEY|SECRET)|[A-Z0-9]*PASSW(?:OR)?D[A-Z0-9]*)(?:_|$)",
                         re.IGNORECASE)
GPU = "nvidia.com/gpu"


# ---------------------------------------------------------------- loading


def _load_manifests() -> list[tuple[str, dict]]:
    out = []
    for path in MANIFESTS:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if doc is not None:
                out.append((f"{path.name}#{i}", doc))
    return out


DOCS = _load_manifests()
DOC_IDS = [name for name, _ in DOCS]


def _by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in DOCS if doc.get("kind") == kind]


@lru_cache(maxsize=None)
def _validator(kind: str):
    import jsonschema

    schema = json.loads((KUBERAY / SCHEMA_FILES[kind]).read_text(encoding="utf-8"))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _schema_errors(doc: dict) -> list[str]:
    kind = doc.get("kind")
    if kind not in SCHEMA_FILES:
        return [f"kind {kind!r} has no KubeRay schema; expected one of {sorted(SCHEMA_FILES)}"]
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in _validator(kind).iter_errors(doc)]


# ---------------------------------------------------------------- walking a manifest


def _cluster_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) pairs: a RayCluster's spec or a RayJob's inline rayClusterSpec."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayCluster":
        return [("spec", spec)]
    if doc.get("kind") == "RayJob" and spec.get("rayClusterSpec"):
        return [("spec.rayClusterSpec", spec["rayClusterSpec"])]
    return []


def _groups(cspec: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) of the head and every worker group."""
    groups = [("head", cspec.get("headGroupSpec") or {})]
    groups += [(g.get("groupName", "?"), g) for g in cspec.get("workerGroupSpecs") or []]
    return groups


def _pod(group: dict) -> dict:
    return (group.get("template") or {}).get("spec") or {}


def _ray_container(group: dict) -> dict:
    """KubeRay treats the first container of a group's pod as the Ray container."""
    return (_pod(group).get("containers") or [{}])[0]


def _all_containers(doc: dict) -> list[tuple[str, dict]]:
    out = []
    for where, cspec in _cluster_specs(doc):
        for name, group in _groups(cspec):
            pod = _pod(group)
            for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
                out.append((f"{where}/{name}/{c.get('name')}", c))
    submitter = (doc.get("spec") or {}).get("submitterPodTemplate")
    if doc.get("kind") == "RayJob" and submitter:
        for c in (submitter.get("spec") or {}).get("containers") or []:
            out.append((f"submitterPodTemplate/{c.get('name')}", c))
    return out


def _env_lists(node, path="") -> list[tuple[str, list]]:
    """Every `env:` list anywhere in a manifest (containers, autoscaler, submitter, ...)."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "env" and isinstance(v, list):
                found.append((f"{path}/env", v))
            found += _env_lists(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _env_lists(v, f"{path}[{i}]")
    return found


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([KMGTPE]i|[numkMGTPE])?$")
_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
           "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def quantity(value) -> Decimal:
    """A Kubernetes resource quantity ("8", 8, "500m", "32Gi") as a number."""
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number, suffix = m.groups()
    return Decimal(number) * Decimal(_SUFFIX[suffix] if suffix else 1)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


# ---------------------------------------------------------------- KubeRay's run-time rules

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _cluster_spec_violations(where: str, cspec: dict) -> list[str]:
    errors = []
    head = cspec.get("headGroupSpec") or {}
    if not _pod(head).get("containers"):
        errors.append(f"{where}.headGroupSpec: needs at least one container")
    autoscaling = bool(cspec.get("enableInTreeAutoscaling"))
    for name, group in _groups(cspec):
        params = group.get("rayStartParams") or {}
        if group.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            errors.append(f"{where}/{name}: resources set both in rayStartParams and in `resources`")
        if "labels" in params:
            errors.append(f"{where}/{name}: rayStartParams['labels'] is not supported; use `labels`")
        if group is head:
            continue
        if not _pod(group).get("containers"):
            errors.append(f"{where}/{name}: a worker group needs at least one container")
        lo, hi, n = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas")
        if not autoscaling and (lo is None or hi is None):
            errors.append(f"{where}/{name}: set minReplicas and maxReplicas when autoscaling is off")
        if lo is not None and hi is not None and lo > hi:
            errors.append(f"{where}/{name}: minReplicas {lo} > maxReplicas {hi}")
        if n is not None and lo is not None and hi is not None and not lo <= n <= hi:
            errors.append(f"{where}/{name}: replicas {n} outside [{lo}, {hi}]")
    auth = cspec.get("authOptions") or {}
    if auth.get("mode") == "token":
        version = cspec.get("rayVersion")
        if not version:
            errors.append(f"{where}.authOptions: mode token needs rayVersion (>= 2.52.0)")
        elif _version(version) < (2, 52, 0):
            errors.append(f"{where}.authOptions: mode token needs Ray >= 2.52.0, got {version}")
        if auth.get("enableK8sTokenAuth") and auth.get("secretName"):
            errors.append(f"{where}.authOptions: enableK8sTokenAuth and secretName are exclusive")
    elif auth.get("enableK8sTokenAuth"):
        errors.append(f"{where}.authOptions: enableK8sTokenAuth needs mode token")
    return errors


def operator_violations(doc: dict) -> list[str]:
    """What the KubeRay operator rejects at run time although the CRD schema accepts it."""
    errors = []
    name = (doc.get("metadata") or {}).get("name", "")
    if not _DNS1035.match(name or ""):
        errors.append(f"metadata.name {name!r}: must be a DNS-1035 label")
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayJob":
        if len(name) > 47:
            errors.append(f"metadata.name {name!r}: a RayJob name has at most 47 characters")
        mode = spec.get("submissionMode", "K8sJobMode")
        if mode not in SUBMISSION_MODES:
            errors.append(f"spec.submissionMode {mode!r}: expected one of {sorted(SUBMISSION_MODES)}")
        shutdown = bool(spec.get("shutdownAfterJobFinishes"))
        if spec.get("suspend") and not shutdown:
            errors.append("spec.suspend: true is only allowed with shutdownAfterJobFinishes: true")
        ttl = spec.get("ttlSecondsAfterFinished", 0)
        if ttl < 0:
            errors.append("spec.ttlSecondsAfterFinished: must be >= 0")
        if ttl > 0 and not shutdown:
            errors.append("spec.ttlSecondsAfterFinished: needs shutdownAfterJobFinishes: true")
        selector = spec.get("clusterSelector") or {}
        backoff = spec.get("backoffLimit")
        if backoff is not None and backoff < 0:
            errors.append(f"spec.backoffLimit {backoff}: must be >= 0")
        if selector:
            if backoff:
                errors.append("spec.backoffLimit: not allowed with clusterSelector")
            if spec.get("suspend"):
                errors.append("spec.suspend: not allowed with clusterSelector")
            if not selector.get("ray.io/cluster"):
                errors.append("spec.clusterSelector: needs a non-empty ray.io/cluster")
            if mode == "SidecarMode":
                errors.append("spec.clusterSelector: not supported in SidecarMode")
        elif not spec.get("rayClusterSpec"):
            errors.append("spec: set rayClusterSpec or clusterSelector")
        if mode == "InteractiveMode" and backoff:
            errors.append("spec.backoffLimit: not allowed in InteractiveMode")
        if mode == "SidecarMode":
            for key in ("submitterPodTemplate", "submitterConfig"):
                if spec.get(key):
                    errors.append(f"spec.{key}: not supported in SidecarMode")
            head_pod = _pod((spec.get("rayClusterSpec") or {}).get("headGroupSpec") or {})
            if head_pod.get("restartPolicy") not in (None, "", "Never"):
                errors.append("SidecarMode: the head pod's restartPolicy must be Never or unset")
        for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
            if key in spec and spec[key] <= 0:
                errors.append(f"spec.{key}: must be a positive integer")
        if "runtimeEnvYAML" in spec:
            try:
                env = yaml.safe_load(spec["runtimeEnvYAML"])
            except yaml.YAMLError as exc:
                errors.append(f"spec.runtimeEnvYAML: not valid YAML: {exc}")
            else:
                if not isinstance(env, dict):
                    errors.append(f"spec.runtimeEnvYAML: must be a mapping, got {type(env).__name__}")
        if (spec.get("rayClusterSpec") or {}).get("authOptions", {}).get("enableK8sTokenAuth"):
            errors.append("spec.rayClusterSpec.authOptions.enableK8sTokenAuth: not supported for RayJob")
    for where, cspec in _cluster_specs(doc):
        errors += _cluster_spec_violations(where, cspec)
    return errors
