from __future__ import annotations

import pytest

from renas_db.evolution import Candidate, step_rng, tournament


def test_parent_best_victim_worst_with_deterministic_ties():
    cands = [Candidate(i, f) for i, f in enumerate([0.5, 0.9, 0.9, 0.1, 0.1], start=1)]
    t = tournament(cands, 5, "worst", step_rng(0, 0))
    assert t.parent_id == 2          # best, tie -> the oldest
    assert t.victim_id == 5          # worst, tie -> the youngest
    assert sorted(t.sample) == [1, 2, 3, 4, 5]


def test_equal_fitness_never_picks_parent_as_victim():
    cands = [Candidate(i, 0.5) for i in range(10)]
    for step in range(50):
        t = tournament(cands, 2, "worst", step_rng(1, step))
        assert t.parent_id != t.victim_id


def test_oldest_removal_and_seeding():
    cands = [Candidate(i, i / 10) for i in range(3, 10)]
    t = tournament(cands, 3, "oldest", step_rng(7, 3))
    assert t.victim_id == 3
    assert t == tournament(list(reversed(cands)), 3, "oldest", step_rng(7, 3))
    samples = {tournament(cands, 3, "oldest", step_rng(7, k)).sample for k in range(20)}
    assert len(samples) > 5  # different steps draw different samples
    with pytest.raises(ValueError):
        tournament(cands[:2], 3, "worst", step_rng(0, 0))


def test_a_quarantined_candidate_is_never_the_parent_but_may_be_the_victim():
    cands = [Candidate(1, 0.9, quarantined=True), Candidate(2, 0.5), Candidate(3, 0.1,
                                                                              True)]
    for k in range(10):
        t = tournament(cands, 3, "worst", step_rng(0, k))
        assert t.parent_id == 2 and t.victim_id == 3
    assert tournament([Candidate(1, 0.9, True), Candidate(2, 0.5, True)], 2, "worst",
                      step_rng(0, 0)) is None
