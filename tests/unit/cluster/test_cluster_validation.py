"""Kubernetes deployment files (cluster/*.yaml), as KubeRay and the API server will see them; offline and fast:

1. Schema: every manifest validates strictly (``additionalProperties: false``) against KubeRay's v1
   CRD JSON schema of its ``kind``, from ``shared/kuberay`` beside the repo (skipped when absent).
2. Operator rules the schema cannot express (what KubeRay's validation rejects at run time):
   ``operator_violations`` implements them, the shipped manifests must have none, and every rule is
   shown to fire on a broken copy so the checker is not vacuous.

Project rules are in test_cluster_project_rules.py, hardening in test_cluster_hardening.py.
"""

from __future__ import annotations

import copy

import pytest

from kuberay_manifests import (
    ALL_DOCS, DOC_IDS, DOCS, KINDS, POLICIES, POLICY_IDS, cluster_specs, ray_container, rayjob_copy,
)
from kuberay_validation import needs_schemas, operator_violations, schema_errors


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
    errors = schema_errors(doc)
    assert not errors, f"{name} does not match the KubeRay {doc.get('kind')} schema:\n  " + "\n  ".join(errors)


@needs_schemas
@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_schema_rejects_unknown_fields(name, doc):
    """additionalProperties: false holds at the spec and deep inside a container."""
    bad = copy.deepcopy(doc)
    bad["spec"]["shutdownAfterJobFinish"] = True  # misspelled
    assert any("shutdownAfterJobFinish" in e for e in schema_errors(bad))

    bad = copy.deepcopy(doc)
    _, cspec = cluster_specs(bad)[0]
    ray_container(cspec["workerGroupSpecs"][0])["resource"] = {"limits": {"cpu": "1"}}  # not `resources`
    assert any("resource" in e for e in schema_errors(bad))

    bad = copy.deepcopy(doc)
    _, cspec = cluster_specs(bad)[0]
    cspec["authOptions"]["tokenValue"] = "x"
    assert schema_errors(bad)


@pytest.mark.parametrize("name, doc", POLICIES, ids=POLICY_IDS)
def test_network_policy_matches_schema(name, doc):
    errors = schema_errors(doc)
    assert not errors, f"{name} is not a valid networking.k8s.io/v1 NetworkPolicy:\n  " + "\n  ".join(errors)
    bad = copy.deepcopy(doc)
    bad["spec"]["ingress"][0]["form"] = bad["spec"]["ingress"][0].pop("from")  # misspelled: admits everyone
    assert any("form" in e for e in schema_errors(bad))


# ---------------------------------------------------------------- 2. operator rules


@pytest.mark.parametrize("name, doc", DOCS, ids=DOC_IDS)
def test_manifest_passes_operator_rules(name, doc):
    errors = operator_violations(doc)
    assert not errors, f"{name} breaks KubeRay run-time rules:\n  " + "\n  ".join(errors)


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
    errors = operator_violations(mutate(rayjob_copy()))
    assert any(expected in e for e in errors), f"expected a violation mentioning {expected!r}, got {errors}"
