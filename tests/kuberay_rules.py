"""Loading and checking KubeRay manifests: the schema validators, the operator's run-time rules
that the schema cannot express (``operator_violations``), the pod hardening rules
(``hardening_violations``) and the network exposure rules (``network_violations``). Used by
test_cluster.py."""

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
# Every kind cluster/*.yaml may hold, with its apiVersion; KubeRay kinds are checked against
# shared/kuberay, NetworkPolicy against NETWORK_POLICY_SCHEMA below.
KINDS = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "NetworkPolicy": "networking.k8s.io/v1"}

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


ALL_DOCS = _load_manifests()
# The KubeRay documents (RayCluster, RayJob): what the schema and operator tests run on.
DOCS = [(name, doc) for name, doc in ALL_DOCS if doc.get("kind") in SCHEMA_FILES]
DOC_IDS = [name for name, _ in DOCS]
POLICIES = [(name, doc) for name, doc in ALL_DOCS if doc.get("kind") == "NetworkPolicy"]
POLICY_IDS = [name for name, _ in POLICIES]


def _by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in ALL_DOCS if doc.get("kind") == kind]


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


def _schema_errors(doc: dict) -> list[str]:
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


# ---------------------------------------------------------------- pod hardening

# Settings every Ray container (and the RayJob submitter) must end up with, container-level values
# overriding pod-level ones as in Kubernetes.
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}
EPHEMERAL = "ephemeral-storage"


def dockerfile_user() -> tuple[int, int]:
    """The numeric uid and gid of the Dockerfile's last USER (runAsNonRoot needs a numeric uid)."""
    text = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "cluster/Dockerfile has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), f"USER {users[-1]}: use a numeric uid:gid"
    return int(uid), int(gid or uid)


def _pod_templates(doc: dict) -> list[tuple[str, dict, bool]]:
    """(where, pod spec, may keep the service account token) of every pod template in a manifest.
    Only the head of a cluster with the in-tree autoscaler may keep its token: the autoscaler
    sidecar runs there and scales worker pods through the Kubernetes API."""
    out = []
    for where, cspec in _cluster_specs(doc):
        autoscaling = bool(cspec.get("enableInTreeAutoscaling"))
        for name, group in _groups(cspec):
            out.append((f"{where}/{name}", _pod(group), autoscaling and name == "head"))
    submitter = (doc.get("spec") or {}).get("submitterPodTemplate")
    if doc.get("kind") == "RayJob" and submitter:
        out.append(("spec.submitterPodTemplate", submitter.get("spec") or {}, False))
    return out


def _writable_tmp(pod: dict, container: dict) -> bool:
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        if mount.get("mountPath", "").rstrip("/") == "/tmp" and not mount.get("readOnly"):
            return "emptyDir" in volumes.get(mount.get("name"), {})
    return False


def _container_violations(label: str, pod: dict, c: dict, uid: int, gid: int) -> list[str]:
    errors = []
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}

    def effective(key):
        return csc[key] if key in csc else psc.get(key)

    if effective("runAsNonRoot") is not True:
        errors.append(f"{label}: runAsNonRoot must be true")
    if effective("runAsUser") != uid:
        errors.append(f"{label}: runAsUser {effective('runAsUser')} != the Dockerfile's uid {uid}")
    if effective("runAsGroup") != gid:
        errors.append(f"{label}: runAsGroup {effective('runAsGroup')} != the Dockerfile's gid {gid}")
    seccomp = (effective("seccompProfile") or {}).get("type")
    if seccomp not in SECCOMP_TYPES:
        errors.append(f"{label}: seccompProfile type {seccomp!r}; use RuntimeDefault (pod or container)")
    if csc.get("allowPrivilegeEscalation") is not False:
        errors.append(f"{label}: allowPrivilegeEscalation must be false")
    if csc.get("privileged"):
        errors.append(f"{label}: privileged must not be set")
    caps = csc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        errors.append(f"{label}: capabilities must drop [\"ALL\"]")
    if caps.get("add"):
        errors.append(f"{label}: capabilities.add {caps['add']}: add none")
    if csc.get("readOnlyRootFilesystem") and not _writable_tmp(pod, c):
        errors.append(f"{label}: readOnlyRootFilesystem needs a writable emptyDir at /tmp (Ray writes /tmp/ray)")
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    if EPHEMERAL not in req or EPHEMERAL not in lim:
        errors.append(f"{label}: set {EPHEMERAL} requests and limits")
    elif quantity(req[EPHEMERAL]) != quantity(lim[EPHEMERAL]):
        errors.append(f"{label}: {EPHEMERAL} requests {req[EPHEMERAL]} != limits {lim[EPHEMERAL]}")
    return errors


def hardening_violations(doc: dict, user: tuple[int, int] | None = None) -> list[str]:
    """Every Ray pod and the RayJob submitter: non-root as the image's user, no privilege escalation,
    no capabilities, a seccomp profile, a bounded writable layer, no service account token."""
    uid, gid = user or dockerfile_user()
    errors = []
    spec = doc.get("spec") or {}
    if (doc.get("kind") == "RayJob" and spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
            and not spec.get("submitterPodTemplate")):
        errors.append("spec.submitterPodTemplate: missing; KubeRay's default submitter pod runs with "
                      "no securityContext and a service account token")
    for where, pod, may_keep_token in _pod_templates(doc):
        if pod.get("automountServiceAccountToken") is not False and not may_keep_token:
            errors.append(f"{where}: automountServiceAccountToken must be false (only an autoscaling head keeps it)")
        if not pod.get("containers"):
            errors.append(f"{where}: no containers")
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            errors += _container_violations(f"{where}/{c.get('name')}", pod, c, uid, gid)
    return errors


# ---------------------------------------------------------------- network exposure

CLUSTER_LABEL = "ray.io/cluster"
NODE_TYPE_LABEL = "ray.io/node-type"
# Head ports that Ray picks at random unless rayStartParams pins them, and the worker-port range:
# a NetworkPolicy that lists the head's ports can only list them if they are pinned.
PINNED_HEAD_PARAMS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                      "dashboard-agent-grpc-port", "runtime-env-agent-port")
WORKER_PORT_RANGE = ("min-worker-port", "max-worker-port")
EXPOSING_SERVICE_TYPES = {"LoadBalancer", "NodePort"}


def pod_labels(cluster_name: str, group_name: str, group: dict, head: bool) -> dict[str, str]:
    """The labels KubeRay puts on a group's pods: the template's plus its own ray.io/* labels."""
    labels = dict(((group.get("template") or {}).get("metadata") or {}).get("labels") or {})
    labels.update({CLUSTER_LABEL: cluster_name, NODE_TYPE_LABEL: "head" if head else "worker",
                   "ray.io/group": "headgroup" if head else group_name, "ray.io/is-ray-node": "yes"})
    return labels


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector matches a set of labels (an empty selector matches everything)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}.get(op, False)
        if not ok:
            return False
    return True


def head_ports(cspec: dict) -> set[int]:
    """The TCP ports the head listens on for other pods: its Ray container's ports and the ports
    pinned in rayStartParams (the worker-port range included)."""
    head = cspec.get("headGroupSpec") or {}
    params = head.get("rayStartParams") or {}
    ports = {int(p["containerPort"]) for p in _ray_container(head).get("ports") or []
             if p.get("protocol", "TCP") == "TCP"}
    ports |= {int(params[k]) for k in PINNED_HEAD_PARAMS if k in params}
    if all(k in params for k in WORKER_PORT_RANGE):
        ports |= set(range(int(params[WORKER_PORT_RANGE[0]]), int(params[WORKER_PORT_RANGE[1]]) + 1))
    return ports


def _ranges(ports) -> str:
    out, ports = [], sorted(ports)
    while ports:
        lo = hi = ports.pop(0)
        while ports and ports[0] == hi + 1:
            hi = ports.pop(0)
        out.append(str(lo) if lo == hi else f"{lo}-{hi}")
    return ", ".join(out)


def _rule_ports(where: str, rule: dict) -> tuple[set[int], list[str]]:
    ports, errors = set(), []
    if not rule.get("ports"):
        return set(range(1, 65536)), [f"{where}: no `ports`, so every port is open; list the head's ports"]
    for p in rule["ports"]:
        if p.get("protocol", "TCP") != "TCP":
            errors.append(f"{where}: protocol {p.get('protocol')}: Ray uses TCP only")
        if not isinstance(p.get("port"), int):
            errors.append(f"{where}: port {p.get('port')!r}: use port numbers (named ports can't be checked)")
            continue
        ports |= set(range(p["port"], p.get("endPort", p["port"]) + 1))
    return ports, errors


def network_violations(cluster: dict, policies: list[dict]) -> list[str]:
    """A RayCluster's network exposure: its head Service stays inside the cluster, every Ray pod is
    selected by a NetworkPolicy whose ingress admits only this cluster's pods, and the head's
    policies admit exactly the head's (pinned) Ray ports."""
    errors = []
    name = (cluster.get("metadata") or {}).get("name", "")
    cspec = cluster.get("spec") or {}
    head = cspec.get("headGroupSpec") or {}
    service_types = {head.get("serviceType"), ((head.get("headService") or {}).get("spec") or {}).get("type")}
    for kind in sorted(service_types & EXPOSING_SERVICE_TYPES):
        errors.append(f"headGroupSpec: head Service of type {kind} exposes the dashboard; use ClusterIP")
    if head.get("enableIngress"):
        errors.append("headGroupSpec.enableIngress: an Ingress exposes the dashboard outside the cluster")
    params = head.get("rayStartParams") or {}
    for key in PINNED_HEAD_PARAMS + WORKER_PORT_RANGE:
        if key not in params:
            errors.append(f"headGroupSpec.rayStartParams: pin {key}, or the head's NetworkPolicy can't list it")

    for i, policy in enumerate(policies):
        pname = (policy.get("metadata") or {}).get("name", f"#{i}")
        spec = policy.get("spec") or {}
        where = f"NetworkPolicy {pname}"
        if (spec.get("podSelector") or {}).get("matchLabels", {}).get(CLUSTER_LABEL) != name:
            errors.append(f"{where}: podSelector must match {CLUSTER_LABEL}: {name} (only this cluster's pods)")
        if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
            errors.append(f"{where}: policyTypes must include Ingress")
        for j, rule in enumerate(spec.get("ingress") or []):
            if not rule.get("from"):
                errors.append(f"{where}.ingress[{j}]: no `from`, so every source is admitted")
            for peer in rule.get("from") or []:
                for key in ("namespaceSelector", "ipBlock"):
                    if key in peer:
                        errors.append(f"{where}.ingress[{j}]: peer with {key} admits pods outside the Ray cluster")
                if (peer.get("podSelector") or {}).get("matchLabels", {}).get(CLUSTER_LABEL) != name:
                    errors.append(f"{where}.ingress[{j}]: peers must select {CLUSTER_LABEL}: {name}")

    groups = [("head", head, True)] + [(g.get("groupName", "?"), g, False) for g in cspec.get("workerGroupSpecs") or []]
    expected = head_ports(cspec)
    for gname, group, is_head in groups:
        labels = pod_labels(name, gname, group, is_head)
        chosen = [p for p in policies if selects((p.get("spec") or {}).get("podSelector") or {}, labels)]
        if not chosen:
            what = "the head" if is_head else f"worker group {gname}"
            errors.append(f"no NetworkPolicy selects {what}'s pods; their ports are open to the namespace")
        if not is_head:
            continue
        admitted = set()
        for p in chosen:
            pname = (p.get("metadata") or {}).get("name")
            for j, rule in enumerate((p.get("spec") or {}).get("ingress") or []):
                ports, errs = _rule_ports(f"NetworkPolicy {pname}.ingress[{j}] (selects the head)", rule)
                admitted |= ports
                errors += errs
        if chosen and admitted - expected:
            errors.append(f"the head's NetworkPolicy admits ports the head does not serve: {_ranges(admitted - expected)}")
        if chosen and expected - admitted:
            errors.append(f"the head's NetworkPolicy blocks Ray ports of the head: {_ranges(expected - admitted)}")
    return errors
