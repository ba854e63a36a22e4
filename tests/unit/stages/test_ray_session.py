"""The Ray a job starts for itself names its own dashboard to every process it starts (RAY_API_SERVER_ADDRESS):
Ray's state API would otherwise scan the machine and, beside a second local Ray, fail or ask the other one."""

import os
import socket

from dlma_ray.stages import ray_session


def test_a_started_ray_gets_a_free_dashboard_port_named_while_it_starts(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with socket.socket() as busy:  # the usual port taken (another local Ray): a free one instead
        try:
            busy.bind(("127.0.0.1", 8265))
            busy.listen()
        except OSError:
            pass  # already taken by something else: the same situation
        with ray_session.own_dashboard("local") as options:
            port = options["dashboard_port"]
            assert port != 8265 and os.environ["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{port}"
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))  # still free for Ray to take
    # gone once Ray has started: a later process of this one is never sent to a dashboard that stopped
    assert "RAY_API_SERVER_ADDRESS" not in os.environ


def test_joining_a_cluster_or_a_users_address_changes_nothing(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    for address in ("auto", "ray://head:10001", "10.0.0.1:6379"):
        with ray_session.own_dashboard(address) as options:
            assert options == {} and "RAY_API_SERVER_ADDRESS" not in os.environ
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://dashboard.example:8265")
    with ray_session.own_dashboard("local") as options:
        assert options == {}
    assert os.environ["RAY_API_SERVER_ADDRESS"] == "http://dashboard.example:8265"
