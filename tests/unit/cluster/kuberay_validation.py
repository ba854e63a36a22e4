"""What the API server and the KubeRay operator accept: every manifest against KubeRay's v1 CRD JSON
schema of its kind (from shared/kuberay beside the repo) or a strict networking.k8s.io/v1
NetworkPolicy schema (``schema_errors``), and the operator's run-time rules that the schema cannot
express (``operator_violations``). Used by test_cluster_validation.py."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from kuberay_manifests import KINDS, SCHEMA_FILES, cluster_specs, node_groups, pod_spec

KUBERAY = Path(__file__).resolve().parents[4] / "shared" / "kuberay"

needs_schemas = pytest.mark.skipif(
    not KUBERAY.is_dir(),
    reason=f"KubeRay CRD schemas not found at {KUBERAY} (shared/kuberay beside the repo); "
    "schema validation needs raycluster_v1.json and rayjob_v1.json",
)

SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


# ---------------------------------------------------------------- schemas


@lru_cache(maxsize=None)
def _validator(kind: str):
    import jsonschema

    schema = json.loads((KUBERAY / SCHEMA_FILES[kind]).read_text(encoding="utf-8"))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


# networking.k8s.io/v1 NetworkPolicy, strict like the KubeRay schemas (a misspelled field is an
# error; the API server would drop it, and a dropped `from` or `ports` admits everyone / every port).
_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {"key": {"type": "string"},
                           "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
_PEER = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {
        "podSelector": _SELECTOR, "namespaceSelector": _SELECTOR,
        "ipBlock": {"type": "object", "additionalProperties": False, "required": ["cidr"],
                    "properties": {"cidr": {"type": "string"},
                                   "except": {"type": "array", "items": {"type": "string"}}}},
    },
}
_PORT = {
    "type": "object", "additionalProperties": False,
    "properties": {"protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                   "port": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string"}]},
                   "endPort": {"type": "integer", "minimum": 1, "maximum": 65535}},
}
NETWORK_POLICY_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"enum": ["networking.k8s.io/v1"]},
        "kind": {"enum": ["NetworkPolicy"]},
        "metadata": {"type": "object", "additionalProperties": False, "required": ["name"],
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["podSelector"],
            "properties": {
                "podSelector": _SELECTOR,
                "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
                "ingress": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"from": {"type": "array", "items": _PEER},
                                   "ports": {"type": "array", "items": _PORT}}}},
                "egress": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"to": {"type": "array", "items": _PEER},
                                   "ports": {"type": "array", "items": _PORT}}}},
            },
        },
    },
}


def schema_errors(doc: dict) -> list[str]:
    kind = doc.get("kind")
    if kind == "NetworkPolicy":
        import jsonschema

        validator = jsonschema.Draft4Validator(NETWORK_POLICY_SCHEMA)
    elif kind in SCHEMA_FILES:
        validator = _validator(kind)
    else:
        return [f"kind {kind!r} has no schema here; expected one of {sorted(KINDS)}"]
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(doc)]


# ---------------------------------------------------------------- KubeRay's run-time rules

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _cluster_spec_violations(where: str, cspec: dict) -> list[str]:
    errors = []
    head = cspec.get("headGroupSpec") or {}
    if not pod_spec(head).get("containers"):
        errors.append(f"{where}.headGroupSpec: needs at least one container")
    autoscaling = bool(cspec.get("enableInTreeAutoscaling"))
    for name, group in node_groups(cspec):
        params = group.get("rayStartParams") or {}
        if group.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            errors.append(f"{where}/{name}: resources set both in rayStartParams and in `resources`")
        if "labels" in params:
            errors.append(f"{where}/{name}: rayStartParams['labels'] is not supported; use `labels`")
        if group is head:
            continue
        if not pod_spec(group).get("containers"):
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
            head_pod = pod_spec((spec.get("rayClusterSpec") or {}).get("headGroupSpec") or {})
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
    for where, cspec in cluster_specs(doc):
        errors += _cluster_spec_violations(where, cspec)
    return errors
