from __future__ import annotations

import json
import random

import pytest

from renas_db.errors import GenotypeError
from renas_db.space import (
    OPS,
    Action,
    Block,
    Genotype,
    Node,
    diff,
    parse,
    random_genotype,
    vocab_size,
)


def test_renasnet_preset():
    g = parse("renasnet")
    assert g.to_text() == ("0 sep5 + 1 sep3 | 1 id + 1 sep3 | 0 sep3 + 0 avg3 | "
                           "1 sep5 + 0 sep3 | 2 id + 2 sep3")
    assert g.blocks[4] == Block(2, 2, OPS.index("identity"), OPS.index("sep_conv_3x3"))
    assert g.loose_ends() == [1, 2, 3, 4]


def test_text_and_json_round_trip():
    rng = random.Random(0)
    for _ in range(500):
        g = random_genotype(rng.randint(1, 8), rng)
        text = g.to_text()
        assert parse(text).to_text() == text
        assert parse(json.dumps(g.to_json())) == g
        assert parse(g.to_json()) == g


def test_arch_hash_ignores_pair_order_only():
    g = parse("0 sep5 + 1 sep3 | 2 max3 + 0 id")
    swapped = parse("1 sep3 + 0 sep5 | 0 id + 2 max3")
    assert g.arch_hash() == swapped.arch_hash()
    other = parse("0 sep3 + 1 sep5 | 2 max3 + 0 id")
    assert g.arch_hash() != other.arch_hash()


def test_apply_and_diff():
    g = parse("renasnet")
    child = g.apply([Action(0, "op1", 0), Action(3, "in2", 1), Action(4, "op2", 3)])
    assert diff(g, child) == [Node(0, 0), Node(3, 1), Node(4, 1)]
    assert diff(g, g.apply([Action(1, "op1", g.blocks[1].op1)])) == []
    with pytest.raises(GenotypeError, match="block 1 in1: input 3 out of range 0..2"):
        g.apply([Action(1, "in1", 3)])


def test_tokens():
    g = parse("renasnet")
    t = g.tokens()
    assert len(t) == 25
    assert max(t) < vocab_size(5)
    assert t[4] == t[9] == vocab_size(5) - 1  # combiner tokens


def test_validation_messages():
    with pytest.raises(GenotypeError, match="block 0 in2: input 2 out of range 0..1"):
        parse("0 sep3 + 2 sep3")
    with pytest.raises(GenotypeError, match="unknown op 'conv9'"):
        parse("0 conv9 + 1 sep3")
    with pytest.raises(GenotypeError, match="block 1: expected 'IN OP \\+ IN OP'"):
        parse("0 sep3 + 1 sep3 | 0 sep3")
    with pytest.raises(GenotypeError, match="missing op2"):
        parse([{"in1": 0, "in2": 1, "op1": "identity"}])


def test_fuzz_10000_malformed_inputs_never_crash():
    rng = random.Random(42)
    alphabet = "0123456789 +|-[]{}\":,sepavgmaxid3579xX\n\t\\"
    seeds = ["0 sep5 + 1 sep3 | 1 id + 1 sep3", json.dumps(parse("renasnet").to_json())]
    crashes, accepted = 0, 0
    for i in range(10000):
        if i % 3 == 0:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        else:
            base = list(rng.choice(seeds))
            for _ in range(rng.randint(1, 5)):
                pos = rng.randrange(len(base))
                base[pos] = rng.choice(alphabet)
            text = "".join(base)
        candidates = [text]
        if i % 7 == 0:
            try:
                candidates.append(json.loads(text))
            except Exception:
                candidates.append([[rng.randint(-3, 9), "x", None, 1.5]])
        for c in candidates:
            try:
                g = parse(c)
                assert isinstance(g, Genotype)
                accepted += 1
            except GenotypeError:
                pass
            except Exception:  # pragma: no cover - that is the failure
                crashes += 1
    assert crashes == 0
    assert accepted < 10000
    for hostile in ["[" * 100000, "{}", "[]", None, 3, "x" * 10000, [[0, 0, 0]],
                    [{"in1": True, "in2": 0, "op1": 0, "op2": 0}]]:
        with pytest.raises(GenotypeError):
            parse(hostile)
