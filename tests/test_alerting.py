"""The vectorized alert state against a literal transcription of Prometheus' rules/alerting.go Eval loop."""
import numpy as np
import pandas as pd
import pytest

from rules_engine.evaluate.alerting import episode_extremes, firing_episodes, firing_mask, steps_for


def prometheus_eval_loop(active: np.ndarray, for_steps: int, keep_steps: int) -> np.ndarray:
    """One series, one evaluation at a time, the way Prometheus' AlertingRule.Eval keeps state."""
    state, active_at, keep_firing_since, firing = None, None, None, []
    for now, holds in enumerate(active):
        if holds:
            keep_firing_since = None
            if state is None:
                state, active_at = "pending", now
            if state == "pending" and now - active_at >= for_steps:
                state = "firing"
        else:
            keep = False
            if state == "firing" and keep_steps > 0:
                if keep_firing_since is None:
                    keep_firing_since = now
                keep = now - keep_firing_since < keep_steps
            if not keep:
                state, keep_firing_since = None, None
        firing.append(state == "firing")
    return np.array(firing, dtype=bool)


@pytest.mark.parametrize("seed", range(5))
def test_matches_prometheus_eval_loop_on_random_series(seed):
    rng = np.random.default_rng(seed)
    for _ in range(400):
        rows, series = int(rng.integers(1, 60)), int(rng.integers(1, 5))
        active = rng.random((rows, series)) < rng.random()
        for_steps, keep_steps = int(rng.integers(0, 6)), int(rng.integers(0, 6))
        got = firing_mask(firing_episodes(active, for_steps, keep_steps), series)
        want = np.stack([prometheus_eval_loop(active[:, j], for_steps, keep_steps) for j in range(series)], axis=1)
        assert (got == want).all(), (active.astype(int).T, for_steps, keep_steps)


def test_episode_rows_and_open_end():
    active = np.array([0, 1, 1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)[:, None]
    episodes = firing_episodes(active, for_steps=2, keep_firing_steps=0)
    assert episodes.firing_row.tolist() == [3, 8]
    assert episodes.resolved_row.tolist() == [4, 10]  # 10 == rows: still firing at the end
    assert episodes.rows == 10


def test_keep_firing_for_bridges_short_gaps_into_one_episode():
    active = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)[:, None]
    episodes = firing_episodes(active, for_steps=1, keep_firing_steps=2)
    assert (episodes.firing_row.tolist(), episodes.resolved_row.tolist()) == ([1], [7])


def test_extremes_ignore_missing_samples():
    values = np.array([[1.0, 5.0], [np.nan, 7.0], [3.0, 2.0], [9.0, 1.0]])
    active = ~np.isnan(values) & (values > 0)
    episodes = firing_episodes(active, 0, 0)
    peaks = episode_extremes(values, episodes, largest=True)
    assert peaks.tolist() == [1.0, 9.0, 7.0]
    assert episode_extremes(values, episodes, largest=False).tolist() == [1.0, 3.0, 1.0]


def test_steps_for_rounds_up_like_the_for_comparison():
    step = pd.Timedelta("30s")
    assert steps_for(pd.Timedelta(0), step) == 0
    assert steps_for(pd.Timedelta("5m"), step) == 10
    assert steps_for(pd.Timedelta("45s"), step) == 2
