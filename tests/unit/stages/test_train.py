"""The train stage's refit when Ray Train gives up on a lost node outside a step (a ControllerError)."""

import pytest
from ray.exceptions import ActorUnavailableError
from ray.train import ControllerError

from dlma_ray.stages.train import fit_retrying_lost_nodes, lost_actor


class Trainer:
    """Fails its first `failures` fits with `error`, then returns "result"; counts the trainers made."""

    def __init__(self, failures, error):
        self.failures, self.error, self.made = failures, error, 0

    def __call__(self):
        self.made += 1
        return self

    def fit(self):
        if self.made <= self.failures:
            raise self.error
        return "result"


def node_lost():
    return ControllerError(ActorUnavailableError("RpcError: Connection reset by peer", None))


def test_lost_actor_only_for_controller_errors_from_lost_actors():
    assert lost_actor(node_lost())
    assert not lost_actor(ControllerError(ValueError("a bug in a callback")))
    assert not lost_actor(ActorUnavailableError("outside Ray Train", None))


def test_a_lost_node_is_refitted_within_max_failures():
    make = Trainer(2, node_lost())
    assert fit_retrying_lost_nodes(make, max_failures=2, k=0) == "result" and make.made == 3


def test_refits_stop_at_max_failures():
    make = Trainer(3, node_lost())
    with pytest.raises(ControllerError):
        fit_retrying_lost_nodes(make, max_failures=2, k=0)
    assert make.made == 3
    with pytest.raises(ControllerError):
        fit_retrying_lost_nodes(Trainer(1, node_lost()), max_failures=0, k=0)


def test_other_errors_are_not_refitted():
    make = Trainer(1, ControllerError(ValueError("a bug")))
    with pytest.raises(ControllerError):
        fit_retrying_lost_nodes(make, max_failures=2, k=0)
    assert make.made == 1
