"""Pod hardening and network exposure rules for the KubeRay manifests: every Ray container and the
RayJob submitter run as the Dockerfile's non-root user, locked down (``hardening_violations``); a
RayCluster's head Service stays inside the cluster and NetworkPolicies admit only its own pods, to
the head only on its Ray ports (``network_violations``). Used by test_cluster_hardening.py."""

from __future__ import annotations

import re

from kuberay_manifests import CLUSTER, cluster_specs, node_groups, pod_spec, ray_container, quantity


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
    for where, cspec in cluster_specs(doc):
        autoscaling = bool(cspec.get("enableInTreeAutoscaling"))
        for name, group in node_groups(cspec):
            out.append((f"{where}/{name}", pod_spec(group), autoscaling and name == "head"))
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
    ports = {int(p["containerPort"]) for p in ray_container(head).get("ports") or []
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
