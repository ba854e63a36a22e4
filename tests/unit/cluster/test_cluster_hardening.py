"""Kubernetes deployment files: the pods' hardening and the Ray cluster's network exposure; offline and fast:

4. Hardening (``hardening_violations``, ``network_violations``): every Ray container and the RayJob
   submitter run as the Dockerfile's non-root user with no privilege escalation, no capabilities,
   a seccomp profile, no service account token and bounded ephemeral storage; the head Service is
   ClusterIP and NetworkPolicies admit ingress to the Ray pods only from the same Ray cluster, to
   the head only on its Ray ports. Each rule is shown to fire on a broken copy.
"""

from __future__ import annotations

import copy

import pytest

from kuberay_hardening import (
    CLUSTER_LABEL, EPHEMERAL, dockerfile_user, hardening_violations, head_ports, network_violations, pod_labels,
    selects,
)
from kuberay_manifests import (
    DOC_IDS, DOCS, POLICIES, cluster_specs, docs_of_kind, node_groups, pod_spec, quantity, ray_container, rayjob_copy,
)


# ---------------------------------------------------------------- 4. hardening and network exposure


def _raycluster() -> dict:
    (cluster,) = docs_of_kind("RayCluster")
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
    for where, cspec in cluster_specs(doc):
        assert not cspec.get("enableInTreeAutoscaling"), "autoscaling on: revisit automountServiceAccountToken"
        for group_name, group in node_groups(cspec):
            pod = pod_spec(group)
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
    spec = rayjob_copy()["spec"]
    pod = spec["submitterPodTemplate"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (submitter,) = pod["containers"]
    head = ray_container(spec["rayClusterSpec"]["headGroupSpec"])
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
    head = rayjob_copy()["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")


def test_readonly_root_is_allowed_with_a_writable_tmp():
    """The rule does not forbid readOnlyRootFilesystem: it asks for an emptyDir at /tmp with it."""
    job = rayjob_copy()
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    ray_container(head)["securityContext"]["readOnlyRootFilesystem"] = True
    assert any("/tmp" in e for e in hardening_violations(job))
    pod_spec(head)["volumes"].append({"name": "tmp", "emptyDir": {}})
    ray_container(head)["volumeMounts"].append({"name": "tmp", "mountPath": "/tmp"})
    assert not hardening_violations(job)


def test_autoscaling_head_may_keep_its_token():
    job = rayjob_copy()
    cspec = job["spec"]["rayClusterSpec"]
    cspec["enableInTreeAutoscaling"] = True
    pod_spec(cspec["headGroupSpec"]).pop("automountServiceAccountToken")
    assert not hardening_violations(job)
    pod_spec(cspec["workerGroupSpecs"][0]).pop("automountServiceAccountToken")
    assert any("gpu-8x" in e and "automountServiceAccountToken" in e for e in hardening_violations(job))


def _head_c(**sc):
    def mutate(job):
        c = ray_container(job["spec"]["rayClusterSpec"]["headGroupSpec"])
        for key, value in sc.items():
            if value is None:
                c["securityContext"].pop(key, None)
            else:
                c["securityContext"][key] = value
        return job
    return mutate


def _set_or_drop(mapping: dict, key: str, value) -> None:
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def _worker_pod(**changes):
    def mutate(job):
        pod = pod_spec(job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])
        for key, value in changes.items():
            _set_or_drop(pod, key, value)
        return job
    return mutate


def _pod_sc(key, value):
    def mutate(job):
        _set_or_drop(pod_spec(job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])["securityContext"], key, value)
        return job
    return mutate


def _ephemeral(requests, limits):
    def mutate(job):
        res = ray_container(job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])["resources"]
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
    errors = hardening_violations(mutate(rayjob_copy()))
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
