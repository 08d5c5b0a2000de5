"""The RENAS search space: genotypes of B blocks (in1, in2, op1, op2).

Inputs: 0 = output of cell c-2, 1 = output of cell c-1, 2+j = block j of this cell.
Text form, one block per `|`:  ``0 sep5 + 1 sep3 | 1 id + 1 sep3 | ...``
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from renas_db.errors import GenotypeError

OPS: tuple[str, ...] = ("sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7",
                        "avg_pool_3x3", "max_pool_3x3", "identity")
SHORT: tuple[str, ...] = ("sep3", "sep5", "sep7", "avg3", "max3", "id")
SLOTS: tuple[str, ...] = ("in1", "in2", "op1", "op2")
_OP_INDEX = {**{n: i for i, n in enumerate(OPS)}, **{n: i for i, n in enumerate(SHORT)}}
MAX_BLOCKS = 12
MAX_TEXT = 4096


class Block(NamedTuple):
    in1: int
    in2: int
    op1: int
    op2: int


class Action(NamedTuple):
    """Set `slot` of block `block` to `value` (an input index or an op index)."""
    block: int
    slot: str
    value: int


class Node(NamedTuple):
    """One (input, op) pair of a block: pair 0 = (in1, op1), pair 1 = (in2, op2)."""
    block: int
    pair: int


@dataclass(frozen=True)
class Genotype:
    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        blocks = self.blocks
        if not isinstance(blocks, tuple) or not 1 <= len(blocks) <= MAX_BLOCKS:
            got = len(blocks) if isinstance(blocks, tuple) else type(blocks).__name__
            raise GenotypeError(f"a genotype has 1 to {MAX_BLOCKS} blocks, got {got}")
        for b, block in enumerate(blocks):
            if not isinstance(block, Block):
                raise GenotypeError(f"block {b} is not a Block")
            for slot, value in zip(SLOTS, block):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise GenotypeError(f"block {b} {slot}: not an integer: {value!r}")
                hi = b + 1 if slot.startswith("in") else len(OPS) - 1
                if not 0 <= value <= hi:
                    what = "input" if slot.startswith("in") else "op"
                    raise GenotypeError(f"block {b} {slot}: {what} {value} out of range 0..{hi}")

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    # -- forms --------------------------------------------------------------------------
    def to_text(self) -> str:
        return " | ".join(f"{b.in1} {SHORT[b.op1]} + {b.in2} {SHORT[b.op2]}"
                          for b in self.blocks)

    def __str__(self) -> str:
        return self.to_text()

    def to_json(self) -> list[dict[str, Any]]:
        return [{"in1": b.in1, "in2": b.in2, "op1": OPS[b.op1], "op2": OPS[b.op2]}
                for b in self.blocks]

    def arch_hash(self) -> str:
        """Equal for genotypes that differ only by the order of the two pairs of a block."""
        parts = []
        for b in self.blocks:
            pairs = sorted([(b.in1, b.op1), (b.in2, b.op2)])
            parts.append(f"{pairs[0][0]}.{pairs[0][1]}+{pairs[1][0]}.{pairs[1][1]}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    # -- structure ------------------------------------------------------------------------
    def loose_ends(self) -> list[int]:
        """Blocks no other block consumes: their concatenation is the cell's output."""
        used = {i - 2 for b in self.blocks for i in (b.in1, b.in2) if i >= 2}
        return [j for j in range(len(self.blocks)) if j not in used]

    def uses_input(self, index: int) -> bool:
        return any(index in (b.in1, b.in2) for b in self.blocks)

    def apply(self, actions: Iterable[Action]) -> Genotype:
        blocks = list(self.blocks)
        for a in actions:
            a = to_action(a)
            if not 0 <= a.block < len(blocks):
                raise GenotypeError(f"action block {a.block} out of range 0..{len(blocks) - 1}")
            blocks[a.block] = blocks[a.block]._replace(**{a.slot: a.value})
        return Genotype(tuple(blocks))

    def tokens(self) -> list[int]:
        """The controller's sequence: IN1, IN2, OP1, OP2, combiner per block.
        Vocabulary: inputs 0..B+1, then ops, then the combiner token."""
        n_in = len(self.blocks) + 2
        out: list[int] = []
        for b in self.blocks:
            out += [b.in1, b.in2, n_in + b.op1, n_in + b.op2, n_in + len(OPS)]
        return out


def vocab_size(n_blocks: int) -> int:
    return n_blocks + 2 + len(OPS) + 1


def to_action(a: Any) -> Action:
    if isinstance(a, Action):
        return a
    try:
        if isinstance(a, dict):
            block, slot, value = a["block"], a["slot"], a["value"]
        else:
            block, slot, value = a
    except (KeyError, TypeError, ValueError):
        raise GenotypeError(f"malformed action: {a!r:.80}") from None
    if slot not in SLOTS or not isinstance(block, int) or not isinstance(value, int) \
            or isinstance(block, bool) or isinstance(value, bool):
        raise GenotypeError(f"malformed action: {a!r:.80}")
    return Action(block, slot, value)


def actions_to_json(actions: Sequence[Action]) -> list[list[Any]]:
    return [[a.block, a.slot, a.value] for a in actions]


def actions_from_json(data: Any) -> list[Action]:
    if not isinstance(data, list):
        raise GenotypeError("actions must be a list")
    return [to_action(a) for a in data]


def diff(parent: Genotype, child: Genotype) -> list[Node]:
    """The mutated nodes: pairs of the child whose input or op differs from the parent's."""
    if parent.n_blocks != child.n_blocks:
        raise GenotypeError("genotypes have different numbers of blocks")
    nodes = []
    for j, (p, c) in enumerate(zip(parent.blocks, child.blocks)):
        if (p.in1, p.op1) != (c.in1, c.op1):
            nodes.append(Node(j, 0))
        if (p.in2, p.op2) != (c.in2, c.op2):
            nodes.append(Node(j, 1))
    return nodes


def random_genotype(n_blocks: int, rng: random.Random) -> Genotype:
    blocks = []
    for b in range(n_blocks):
        blocks.append(Block(rng.randrange(b + 2), rng.randrange(b + 2),
                            rng.randrange(len(OPS)), rng.randrange(len(OPS))))
    return Genotype(tuple(blocks))


PRESETS: dict[str, str] = {
    # The authors' released RENASNet cell (their evaluation code).
    "renasnet": "0 sep5 + 1 sep3 | 1 id + 1 sep3 | 0 sep3 + 0 avg3 | 1 sep5 + 0 sep3 | "
                "2 id + 2 sep3",
}


def _op(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise GenotypeError(f"{where}: not an op: {value!r:.40}")
    if isinstance(value, int):
        if 0 <= value < len(OPS):
            return value
        raise GenotypeError(f"{where}: op {value} out of range 0..{len(OPS) - 1}")
    if isinstance(value, str) and value in _OP_INDEX:
        return _OP_INDEX[value]
    raise GenotypeError(f"{where}: unknown op {value!r:.40} (ops: {', '.join(SHORT)})")


def _input(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 4:
        return int(value)
    raise GenotypeError(f"{where}: input must be an integer, got {value!r:.40}")


def _from_text(text: str) -> Genotype:
    blocks = []
    for b, part in enumerate(text.split("|")):
        halves = part.split("+")
        if len(halves) != 2:
            raise GenotypeError(f"block {b}: expected 'IN OP + IN OP', got {part.strip()!r:.60}")
        fields = []
        for h, half in enumerate(halves):
            words = half.split()
            if len(words) != 2:
                raise GenotypeError(f"block {b} pair {h + 1}: expected 'IN OP', got "
                                    f"{half.strip()!r:.40}")
            fields.append((_input(words[0], f"block {b} in{h + 1}"),
                           _op(words[1], f"block {b} op{h + 1}")))
        blocks.append(Block(fields[0][0], fields[1][0], fields[0][1], fields[1][1]))
    return Genotype(tuple(blocks))


def _from_json(data: Any) -> Genotype:
    if isinstance(data, dict) and "genotype" in data:
        return parse(data["genotype"])
    if isinstance(data, dict) and "blocks" in data:
        data = data["blocks"]
    if not isinstance(data, list) or not data:
        raise GenotypeError("a genotype JSON must be a non-empty list of blocks")
    blocks = []
    for b, item in enumerate(data):
        if isinstance(item, dict):
            missing = [s for s in SLOTS if s not in item]
            if missing:
                raise GenotypeError(f"block {b}: missing {', '.join(missing)}")
            values = [item[s] for s in SLOTS]
        elif isinstance(item, list) and len(item) == 4:
            values = item
        else:
            raise GenotypeError(f"block {b}: expected an object with in1, in2, op1, op2 "
                                "or a list of 4")
        blocks.append(Block(_input(values[0], f"block {b} in1"),
                            _input(values[1], f"block {b} in2"),
                            _op(values[2], f"block {b} op1"), _op(values[3], f"block {b} op2")))
    return Genotype(tuple(blocks))


def parse(source: Any) -> Genotype:
    """A Genotype from text, a preset name, JSON text or decoded JSON. Hostile input
    raises GenotypeError, never anything else."""
    try:
        if isinstance(source, Genotype):
            return source
        if isinstance(source, str):
            text = source.strip()
            if len(text) > MAX_TEXT:
                raise GenotypeError(f"genotype text too long ({len(text)} characters)")
            if text in PRESETS:
                return _from_text(PRESETS[text])
            if text[:1] in "[{":
                try:
                    return _from_json(json.loads(text))
                except json.JSONDecodeError as exc:
                    raise GenotypeError(f"genotype JSON is invalid: {exc.msg}") from None
            if not text:
                raise GenotypeError("empty genotype")
            return _from_text(text)
        return _from_json(source)
    except GenotypeError:
        raise
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise GenotypeError(f"malformed genotype: {type(exc).__name__}") from None
