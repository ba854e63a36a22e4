"""The Kubernetes manifests under test, loaded once: cluster/*.yaml by document, the job configs, and
helpers that walk a RayCluster / RayJob (its cluster specs, node groups, pods, containers, env lists)
and read Kubernetes resource quantities. The rules that check them are in kuberay_validation.py
(schema and operator rules) and kuberay_hardening.py (pod hardening and network exposure)."""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
CLUSTER = REPO / "cluster"
MANIFESTS = sorted(CLUSTER.glob("*.yaml"))
JOB_CONFIGS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
SCHEMA_FILES = {"RayCluster": "raycluster_v1.json", "RayJob": "rayjob_v1.json"}
# Every kind cluster/*.yaml may hold, with its apiVersion; KubeRay kinds are checked against
# shared/kuberay, NetworkPolicy against NETWORK_POLICY_SCHEMA in kuberay_validation.py.
KINDS = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "NetworkPolicy": "networking.k8s.io/v1"}
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


def docs_of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in ALL_DOCS if doc.get("kind") == kind]


def rayjob_copy() -> dict:
    """A deep copy of the RayJob in cluster/rayjob.yaml, for a test to change."""
    (job,) = docs_of_kind("RayJob")
    return copy.deepcopy(job)


# ---------------------------------------------------------------- walking a manifest


def cluster_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) pairs: a RayCluster's spec or a RayJob's inline rayClusterSpec."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayCluster":
        return [("spec", spec)]
    if doc.get("kind") == "RayJob" and spec.get("rayClusterSpec"):
        return [("spec.rayClusterSpec", spec["rayClusterSpec"])]
    return []


def node_groups(cspec: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) of the head and every worker group."""
    groups = [("head", cspec.get("headGroupSpec") or {})]
    groups += [(g.get("groupName", "?"), g) for g in cspec.get("workerGroupSpecs") or []]
    return groups


def pod_spec(group: dict) -> dict:
    return (group.get("template") or {}).get("spec") or {}


def ray_container(group: dict) -> dict:
    """KubeRay treats the first container of a group's pod as the Ray container."""
    return (pod_spec(group).get("containers") or [{}])[0]


def all_containers(doc: dict) -> list[tuple[str, dict]]:
    out = []
    for where, cspec in cluster_specs(doc):
        for name, group in node_groups(cspec):
            pod = pod_spec(group)
            for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
                out.append((f"{where}/{name}/{c.get('name')}", c))
    submitter = (doc.get("spec") or {}).get("submitterPodTemplate")
    if doc.get("kind") == "RayJob" and submitter:
        for c in (submitter.get("spec") or {}).get("containers") or []:
            out.append((f"submitterPodTemplate/{c.get('name')}", c))
    return out


def env_lists(node, path="") -> list[tuple[str, list]]:
    """Every `env:` list anywhere in a manifest (containers, autoscaler, submitter, ...)."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "env" and isinstance(v, list):
                found.append((f"{path}/env", v))
            found += env_lists(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += env_lists(v, f"{path}[{i}]")
    return found


def env_by_name(container: dict) -> dict[str, dict]:
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
