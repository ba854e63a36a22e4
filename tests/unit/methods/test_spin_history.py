"""SPIN trains round k on its pairs and the earlier rounds' (spin.history_rounds), with the previous iterate as
the opponent; the method refuses pi_0 as the opponent."""

from __future__ import annotations

import pytest

from dlma_ray.config import ConfigError, load_config
from dlma_ray.methods import check
from dlma_ray.methods.spin import history


def test_history_rounds():
    assert history(0, -1) == [0]
    assert history(2, -1) == [0, 1, 2]  # the release: iteration t on iterations 0..t
    assert history(2, 0) == [2]
    assert history(3, 1) == [2, 3]
    assert history(1, 5) == [0, 1]


def test_spin_needs_the_previous_iterate_as_reference():
    assert check(load_config(None, ["train.method=spin"])).name == "spin"
    with pytest.raises(ConfigError, match="rounds.reference: train.method=spin needs `round_start`"):
        check(load_config(None, ["train.method=spin", "rounds.reference=initial"]))


def test_self_rewarding_checks_its_judgement_counts():
    with pytest.raises(ConfigError, match="self_rewarding.min_valid_judgements: 4 can never be met"):
        check(load_config(None, ["train.method=self_rewarding", "self_rewarding.min_valid_judgements=4"]))
    with pytest.raises(ConfigError, match="self_rewarding.length_control: 0.5 lets the chosen and the rejected"):
        check(load_config(None, ["train.method=self_rewarding", "self_rewarding.length_control=0.5"]))
    with pytest.raises(ConfigError, match="self_rewarding.meta_judge: .* needs self_rewarding.num_judgements >= 2"):
        check(load_config(None, ["train.method=self_rewarding", "self_rewarding.meta_judge=true",
                                 "self_rewarding.num_judgements=1", "self_rewarding.min_valid_judgements=1"]))
    sr = check(load_config(None, ["train.method=self_rewarding", "self_rewarding.meta_judge=true",
                                  "self_rewarding.length_control=0.3"]))
    cfg = load_config(None, ["train.method=self_rewarding", "self_rewarding.meta_judge=true"])
    plain = load_config(None, ["train.method=self_rewarding"])
    # the meta-judge's requests (3 judgements: 3 pairs x 2 orders) make each engine call hold fewer prompts
    assert sr.engine_call(cfg)[0] < sr.engine_call(plain)[0]
    assert sr.judge_work(cfg)[0] == sr.judge_work(plain)[0] + 6
