"""The stability verdict of a finished search (Success, Unstable, Fail)."""
from __future__ import annotations

from renas_db.studies import classify


def test_classify_rule():
    assert classify(0.5, [0.5, 0.52, 0.55, 0.56, 0.56]) == "Success"
    assert classify(0.5, [0.5, 0.45, 0.40, 0.35, 0.30]) == "Fail"
    assert classify(0.5, [0.5, 0.6, 0.55, 0.5, 0.505]) == "Unstable"
    assert classify(None, []) == "unfinished"
