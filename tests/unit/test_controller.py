from __future__ import annotations

import io
import os
import pickle
import random

import pytest
import torch

from renas_db.controller import ControllerConfig, ControllerTrainer, Episode, MutationController
from renas_db.errors import SnapshotError
from renas_db.space import SLOTS, parse, random_genotype


def test_parameters_start_small_and_logits_are_shaped():
    c = MutationController(ControllerConfig())
    for p in c.parameters():
        assert p.abs().max() < 0.1
    assert float(c._shape(torch.tensor([1e6]))) == pytest.approx(2.5)


def test_masking_fuzz_only_legal_inputs():
    rng = random.Random(0)
    trainer = ControllerTrainer.fresh(ControllerConfig(), seed=0)
    with torch.no_grad():  # peaky weights so that illegal choices would show up
        for p in trainer.controller.parameters():
            p.normal_(0, 2.0)
    for _ in range(300):
        g = random_genotype(5, rng)
        actions, log_prob, entropy = trainer.controller.sample(g, rng)
        assert [a.block for a in actions] == list(range(5))
        for a in actions:
            assert a.slot in SLOTS
            hi = a.block + 1 if a.slot.startswith("in") else 5
            assert 0 <= a.value <= hi
        g.apply(actions)  # always a valid genotype
        assert log_prob <= 0 and entropy >= 0


def test_log_prob_recomputed_equals_sampled():
    trainer = ControllerTrainer.fresh(ControllerConfig(), seed=1)
    rng = random.Random(3)
    for _ in range(20):
        g = random_genotype(5, rng)
        actions, lp, _ = trainer.controller.sample(g, rng)
        assert trainer.controller.log_prob(g, actions) == pytest.approx(lp, abs=1e-5)


def test_snapshot_round_trip_is_bit_identical():
    trainer = ControllerTrainer.fresh(ControllerConfig(), seed=2)
    g = parse("renasnet")
    rng = random.Random(0)
    eps = []
    for _ in range(4):
        a, lp, _ = trainer.controller.sample(g, rng)
        eps.append(Episode(g, a, lp, rng.random()))
    trainer.update(eps)
    clone = ControllerTrainer.from_bytes(trainer.to_bytes())
    assert clone.version == 1 and clone.baseline == trainer.baseline
    for seed in range(5):
        assert clone.controller.sample(g, random.Random(seed)) == \
            trainer.controller.sample(g, random.Random(seed))
    # the next update is identical too (optimizer state travelled)
    trainer.update(eps)
    clone.update(eps)
    for a, b in zip(trainer.controller.parameters(), clone.controller.parameters()):
        assert torch.equal(a, b)


def test_snapshot_of_other_config_or_garbage_is_refused(tmp_path):
    data = ControllerTrainer.fresh(ControllerConfig(blocks=4)).to_bytes()
    with pytest.raises(SnapshotError, match="blocks=4"):
        ControllerTrainer.from_bytes(data, ControllerConfig(blocks=5))
    with pytest.raises(SnapshotError):
        ControllerTrainer.from_bytes(b"not a snapshot")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with pytest.raises(SnapshotError):
        ControllerTrainer.from_bytes(pickle.dumps(Evil()))
    buf = io.BytesIO()
    torch.save({"format": "renas-controller-1", "x": Evil()}, buf)
    with pytest.raises(SnapshotError):
        ControllerTrainer.from_bytes(buf.getvalue())
    assert not marker.exists()


def _exact_p(trainer, g) -> float:
    with torch.no_grad():
        c = trainer.controller
        tokens = torch.tensor([g.tokens()])
        states, _ = c.encoder(c.embedding(tokens))
        router = torch.softmax(c._shape(c.router(states[0, 0:4]).squeeze(-1)), 0)
        p = 0.0
        for k in (2, 3):
            ops = torch.softmax(c._shape(c.op_mutator(states[0, k])), 0)
            p += float(router[k] * ops[1])
        return p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_it_learns_and_does_not_with_shuffled_rewards(seed, capsys):
    g = parse("renasnet")

    def run(shuffled: bool) -> tuple[float, float]:
        trainer = ControllerTrainer.fresh(ControllerConfig(), seed=seed)
        rng = random.Random(seed)
        start = _exact_p(trainer, g)
        for _ in range(300):
            actions, lp, _ = trainer.controller.sample(g, rng)
            hit = actions[0].slot in ("op1", "op2") and actions[0].value == 1
            if shuffled:
                hit = rng.random() < 0.3
            trainer.update([Episode(g, actions, lp, 0.9 if hit else 0.1)])
        return start, _exact_p(trainer, g)

    start, end = run(False)
    _, shuffled_end = run(True)
    with capsys.disabled():
        print(f"\nseed {seed}: P(block 0 op -> sep_conv_5x5) {start:.3f} -> {end:.3f} after "
              f"300 updates; shuffled rewards: {shuffled_end:.3f}")
    assert 0.05 < start < 0.12
    assert end > 0.8
    assert shuffled_end < 0.3
