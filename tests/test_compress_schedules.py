"""Polynomial schedule and the dynamic-threshold state machine."""

import jax.numpy as jnp
import numpy as np
import pytest

from deepliflow_jax.compress.schedules import (
    dynamic_threshold_init,
    dynamic_threshold_replay,
    dynamic_threshold_update,
    one_shot_schedule,
    polynomial_schedule,
)

PARAMS = {
    "params": {
        "conv": {"kernel": jnp.asarray(np.random.RandomState(0).randn(3, 3, 4, 8), jnp.float32)},
        "head": {"bias": jnp.asarray(np.random.RandomState(1).randn(12), jnp.float32)},
    }
}
N = 3 * 3 * 4 * 8 + 12  # 300


def test_polynomial_schedule():
    s = polynomial_schedule(80.0, 10, 20, initial_percent=20.0, power=3, frequency=4)
    assert float(s.percent(0)) == pytest.approx(20.0)
    assert float(s.percent(15)) == pytest.approx(80 + (20 - 80) * 0.5**3)
    assert float(s.percent(20)) == pytest.approx(80.0)
    assert float(s.percent(100)) == pytest.approx(80.0)
    steps = [t for t in range(30) if bool(s.update(t))]
    assert steps == [10, 14, 18, 20]
    assert [t for t in range(5) if bool(one_shot_schedule(30, 2).update(t))] == [2]
    with pytest.raises(ValueError, match="percent"):
        polynomial_schedule(100.0, 0, 10)
    with pytest.raises(ValueError, match="begin_step"):
        polynomial_schedule(50.0, 10, 5)


def test_dynamic_threshold_state_machine():
    st = dynamic_threshold_init(5.0, 5.0)
    upd = dict(tolerance=0.1, min_increment=2.0)
    for epe in (1.0, 1.05, 1.2):  # 5 %, 10 % pass; 15 % fails (limit 1.1)
        st = dynamic_threshold_update(st, epe, 1.0, **upd)
    assert [e["accepted"] for e in st.log] == [True, True, False]
    assert st.accepted == 10.0 and st.increment == 2.5 and st.candidate == 12.5
    st = dynamic_threshold_update(st, 1.3, 1.0, **upd)  # 12.5 fails -> 1.25 < 2: stop
    assert st.done and st.accepted == 10.0 and st.log[-1]["next_percent"] is None
    assert dynamic_threshold_update(st, 0.0, 1.0) is st
    st = dynamic_threshold_update(dynamic_threshold_init(), float("nan"), 1.0)
    assert not st.log[-1]["accepted"]  # NaN never passes


def test_dynamic_threshold_replay_rebuilds_the_state_and_keeps_extra_fields():
    upd = dict(tolerance=0.1, min_increment=2.0)
    st = dynamic_threshold_init(5.0, 5.0)
    for i, epe in enumerate((1.0, 1.05, 1.2, 1.3)):  # as the state machine test: ends
        st = dynamic_threshold_update(st, epe, 1.0, **upd, extra={"steps": i})
    assert [e["steps"] for e in st.log] == [0, 1, 2, 3] and st.done
    for n in range(len(st.log) + 1):
        again = dynamic_threshold_replay(st.log[:n], 1.0, start=5.0, increment=5.0, **upd)
        assert again.log == st.log[:n]
        if n < len(st.log):  # the next level to try is the one that was tried next
            assert again.candidate == st.log[n]["percent"] and not again.done
    assert again == st
    with pytest.raises(ValueError, match="comes after the search ended"):
        dynamic_threshold_replay([*st.log, st.log[-1]], 1.0, start=5.0, increment=5.0, **upd)
    with pytest.raises(ValueError, match=r"extra log fields \['epe'\] clash"):
        dynamic_threshold_update(dynamic_threshold_init(), 1.0, 1.0, extra={"epe": 2.0})
