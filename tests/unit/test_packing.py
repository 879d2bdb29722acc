"""Packed training examples: several clips joined to fill the encoder window (long-form robustness)."""

from __future__ import annotations

import numpy as np

from components.train.data import SAMPLE_RATE_HZ, pack_audio, pack_tokens, plan_packs


def test_packs_fit_the_window_and_have_distinct_members():
    durations = [1.0, 2.5, 3.0, 4.2, 0.8, 6.0, 2.0, 3.3, 9.5]
    packs = plan_packs(durations, window_s=9.8, gap_s=0.3, n_packs=20, max_clips=3, seed=0)
    assert 15 <= len(packs) <= 20  # a pack that starts with the 9.5 s clip cannot pair up and is not made
    for members in packs:
        assert 2 <= len(members) <= 3
        assert len(set(members)) == len(members)
        assert sum(durations[i] for i in members) + 0.3 * (len(members) - 1) <= 9.8
        assert 8 not in members  # 9.5 s + another clip never fits


def test_packing_plan_is_a_pure_function_of_the_seed():
    durations = list(np.linspace(1, 5, 40))
    a = plan_packs(durations, 9.8, 0.3, 10, 3, seed=1)
    assert a == plan_packs(durations, 9.8, 0.3, 10, 3, seed=1)
    assert a != plan_packs(durations, 9.8, 0.3, 10, 3, seed=2)


def _first_fit_every_clip(durations, window_s, gap_s, n_packs, max_clips, seed):
    """The plan without the early stop: every pack scans its whole permutation."""
    from components.train.data import PACK_SEED_STREAM

    rng, packs = np.random.default_rng((seed, PACK_SEED_STREAM)), []
    for _ in range(n_packs):
        members, total = [], 0.0
        for i in rng.permutation(len(durations)):
            add = float(durations[i]) + (gap_s if members else 0.0)
            if total + add <= window_s:
                members.append(int(i))
                total += add
                if len(members) == max_clips:
                    break
        if len(members) >= 2:
            packs.append(tuple(members))
    return packs


def test_early_stop_gives_the_same_packs_as_a_full_scan(tmp_path):
    """The scan stops once not even the shortest clip fits; a datasets Column is accepted (read once)."""
    import datasets

    rng = np.random.default_rng(0)
    durations = np.round(rng.uniform(1.2, 6.8, 500), 2).tolist()
    for window_s, max_clips in ((7.8, 3), (9.8, 3), (9.8, 4), (5.0, 2)):
        expected = _first_fit_every_clip(durations, window_s, 0.3, 120, max_clips, seed=4)
        assert plan_packs(durations, window_s, 0.3, 120, max_clips, seed=4) == expected
    datasets.Dataset.from_dict({"duration_s": durations}).save_to_disk(str(tmp_path / "ds"))
    column = datasets.load_from_disk(str(tmp_path / "ds"))["duration_s"]
    assert plan_packs(column, 7.8, 0.3, 50, 3, seed=4) == _first_fit_every_clip(durations, 7.8, 0.3, 50, 3, seed=4)


def test_no_packs_when_nothing_pairs_up():
    assert plan_packs([6.0, 7.0], 9.8, 0.3, 5, 3, seed=0) == []
    assert plan_packs([1.0], 9.8, 0.3, 5, 3, seed=0) == []
    assert plan_packs([1.0, 1.0], 9.8, 0.3, 0, 3, seed=0) == []


def test_pack_audio_joins_with_silence_and_tokens_drop_timestamps():
    a, b = np.ones(16_000, np.float32), np.full(8_000, 2.0, np.float32)
    joined = pack_audio([a, b], (1, 0), gap_s=0.5)
    assert joined.shape == (8_000 + SAMPLE_RATE_HZ // 2 + 16_000,)
    assert joined[:8_000].tolist() == [2.0] * 8_000
    assert not joined[8_000 : 8_000 + SAMPLE_RATE_HZ // 2].any()
    assert joined[-16_000:].tolist() == [1.0] * 16_000
    assert pack_tokens([[1, 2, 900], [3, 950, 4]], (1, 0), timestamp_begin=900) == [3, 4, 1, 2]
