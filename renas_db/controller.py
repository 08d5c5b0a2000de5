"""The reinforced mutation controller of RENAS and its asynchronous REINFORCE trainer."""
from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from renas_db.errors import RenasError, SnapshotError
from renas_db.space import (
    OPS,
    SLOTS,
    Action,
    Genotype,
    actions_from_json,
    actions_to_json,
    parse,
    vocab_size,
)

# Format 3: the input attention's query and key each normalised before they are added
# (format 2 added them raw: its weights mean something else under format 3).
SNAPSHOT_FORMAT = "renas-controller-3"
OLD_FORMATS = {"renas-controller-1": "its input mutator scored candidates with "
                                     "Linear([h_slot; h_cand]), which cannot tell IN1 from IN2",
               "renas-controller-2": "its input attention added unnormalised queries and "
                                     "keys, whose tanh saturates so that IN1 and IN2 end up "
                                     "preferring the same input"}

INPUT_ATTENTION = ("additive", "additive-raw", "concat")
INITS = ("uniform", "small-normal")
ENTROPY_IN = ("reward", "loss")
REWARDS = ("child", "gain")


@dataclass(frozen=True)
class ControllerConfig:
    blocks: int = 5
    hidden: int = 100
    temperature: float = 5.0
    tanh_constant: float = 2.5
    lr: float = 1e-3
    entropy_weight: float = 0.1
    baseline_decay: float = 0.95
    ratio_clip: float = 0.2
    # tan(f*pi/2) is infinite at f=1: fitness is clipped to 0.99, so the largest reward
    # is tan(0.495*pi) = 63.7 and one perfect child cannot blow up an update.
    fitness_clip: float = 0.99
    # episodes folded into one Adam step (the others only wait in the snapshot)
    batch: int = 1
    # "child": tan(f_C pi/2) (the paper); "gain": tan(f_C pi/2) - tan(f_B pi/2), so the
    # advantage judges the mutation rather than the parent it was applied to
    reward_mode: str = "child"
    # The paper's forms. The alternatives are kept for the learnability study only:
    # "additive-raw" is v . tanh(W_q h_slot + W_c h_cand) without the normalisation of
    # query and key; "concat" is Linear([h_slot; h_cand]) (the slot term cancels in the
    # softmax); entropy_in="loss" puts the entropy bonus in the loss instead of the reward.
    input_attention: str = "additive"
    entropy_in: str = "reward"
    seed_encoder: bool = True
    # "uniform": every weight U(-0.1, 0.1), as ENAS's controller; "small-normal": N(0, 0.01),
    # this controller's first initialisation (kept for the study), under which the LSTM
    # states that tell the slots apart start at about 1e-3
    init: str = "uniform"

    def __post_init__(self) -> None:
        for name, allowed in (("input_attention", INPUT_ATTENTION),
                              ("entropy_in", ENTROPY_IN), ("reward_mode", REWARDS),
                              ("init", INITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        if self.batch < 1:
            raise ValueError("batch must be at least 1")

    def tan_fitness(self, fitness: float) -> float:
        f = min(max(float(fitness), 0.0), self.fitness_clip)
        return math.tan(f * math.pi / 2)

    def reward(self, fitness: float, parent_fitness: float | None = None) -> float:
        """The fitness part of the reward (the entropy bonus is added by the caller that
        knows the decision's entropy: episode_reward)."""
        r = self.tan_fitness(fitness)
        if self.reward_mode == "gain":
            if parent_fitness is None:
                raise ValueError("reward 'gain' needs the parent's fitness")
            r -= self.tan_fitness(parent_fitness)
        return r

    def episode_reward(self, fitness: float, parent_fitness: float | None,
                       entropy: float) -> float:
        """What REINFORCE maximises: the paper adds 0.1 x the entropy of the sampled
        decisions to the reward (as ENAS does), not to the loss."""
        bonus = self.entropy_weight * entropy if self.entropy_in == "reward" else 0.0
        return self.reward(fitness, parent_fitness) + bonus


def controller_config(search_config: Any) -> ControllerConfig:
    c = search_config
    return ControllerConfig(blocks=c.blocks, hidden=c.controller_hidden,
                            temperature=c.temperature, tanh_constant=c.tanh_constant,
                            lr=c.controller_lr, entropy_weight=c.entropy_weight,
                            baseline_decay=c.baseline_decay, ratio_clip=c.ratio_clip,
                            batch=c.controller_batch, reward_mode=c.reward)


@dataclass
class Decision:
    actions: list[Action]
    log_prob: torch.Tensor
    entropy: torch.Tensor


class MutationController(nn.Module):
    """Embedding -> BiLSTM over the 5B tokens (its initial state seeded with the begin
    state of cell c-1); per block a router picks the slot to change, then the input
    mutator (additive attention of the slot over the candidate inputs,
    v . tanh(n(W_q h_slot) + n(W_c h_cand)) with n a layer normalisation without gain) or
    the op mutator proposes its new value."""

    def __init__(self, config: ControllerConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.embedding = nn.Embedding(vocab_size(config.blocks), h)
        self.encoder = nn.LSTM(h, h, batch_first=True, bidirectional=True)
        self.begin_states = nn.Parameter(torch.zeros(2, 2 * h))  # cell c-2, cell c-1
        self.router = nn.Linear(2 * h, 1)
        if config.input_attention != "concat":
            # v . tanh(W_q h_slot + W_c h_cand): the slot term survives the tanh, so
            # IN1 and IN2 of one block can prefer different inputs
            self.input_query = nn.Linear(2 * h, h, bias=False)
            self.input_key = nn.Linear(2 * h, h)
            self.input_score = nn.Linear(h, 1, bias=False)
        else:
            self.input_mutator = nn.Linear(4 * h, 1)
        self.op_mutator = nn.Linear(2 * h, len(OPS))
        for p in self.parameters():
            if config.init == "uniform":
                nn.init.uniform_(p, -0.1, 0.1)
            else:
                nn.init.normal_(p, 0.0, 0.01)

    def _shape(self, logits: torch.Tensor) -> torch.Tensor:
        c = self.config
        return c.tanh_constant * torch.tanh(logits / c.temperature)

    def encode(self, genotype: Genotype) -> torch.Tensor:
        """(5B, 2h) hidden states of the genotype's tokens."""
        tokens = torch.tensor([genotype.tokens()])
        x = self.embedding(tokens)
        if self.config.seed_encoder:
            # The begin state of cell c-1 is a (forward, backward) pair of the BiLSTM's
            # output space: its halves are the two directions' initial hidden states.
            h = self.config.hidden
            h0 = self.begin()[1].view(2, 1, h)
            states, _ = self.encoder(x, (h0, torch.zeros_like(h0)))
        else:
            states, _ = self.encoder(x)
        return states[0]

    def begin(self) -> torch.Tensor:
        """The begin states of cells c-2 and c-1, bounded like the LSTM outputs they stand
        beside (tanh): a free vector would outgrow the encoder's states and saturate the
        attention's tanh, after which every query scores it the same."""
        return torch.tanh(self.begin_states)

    def input_candidates(self, states: torch.Tensor, block: int) -> torch.Tensor:
        """The inputs block `block` may take: the begin states of cells c-2 and c-1, then
        the combiner-token states of blocks 0..block-1 (`states` from `encode`)."""
        begin = self.begin()
        return torch.stack([begin[0], begin[1], *[states[5 * j + 4] for j in range(block)]])

    def input_scores(self, h_slot: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The input scorer's score of each candidate for this slot, before the shaping.

        Additive: query and key are each scaled to zero mean and unit RMS over their units
        before they are added. Raw, a key can grow until tanh(query + key) is saturated in
        every unit for every slot: that candidate then scores the ceiling sum |v_i| for
        IN1 and IN2 alike, and the saturated tanh passes no gradient to undo it for one
        slot (docs/design.md, "The input mutator"). Normalised, neither term can outgrow
        the other and their sum stays where the tanh is not flat."""
        form = self.config.input_attention
        if form == "concat":
            pair = torch.cat([h_slot.expand(len(candidates), -1), candidates], dim=1)
            return self.input_mutator(pair).squeeze(-1)
        query, key = self.input_query(h_slot), self.input_key(candidates)
        if form == "additive":
            query = F.layer_norm(query, query.shape[-1:])
            key = F.layer_norm(key, key.shape[-1:])
        return self.input_score(torch.tanh(query + key)).squeeze(-1)

    def input_logits(self, h_slot: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self._shape(self.input_scores(h_slot, candidates))

    def decide(self, genotype: Genotype, *, actions: Sequence[Action] | None = None,
               rng: random.Random | None = None) -> Decision:
        """Sample (rng) or score given `actions`."""
        if genotype.n_blocks != self.config.blocks:
            raise SnapshotError(f"controller is for {self.config.blocks} blocks, genotype "
                                f"has {genotype.n_blocks}")
        states = self.encode(genotype)
        chosen: list[Action] = []
        log_prob = states.new_zeros(())
        entropy = states.new_zeros(())
        for b in range(genotype.n_blocks):
            slot_states = states[5 * b:5 * b + 4]
            router_logits = self._shape(self.router(slot_states).squeeze(-1))
            given = actions[b] if actions is not None else None
            slot_i = self._pick(router_logits, SLOTS.index(given.slot) if given else None,
                                rng)
            lp, ent = _log_prob_entropy(router_logits, slot_i)
            h_slot = slot_states[slot_i]
            if slot_i < 2:
                value_logits = self.input_logits(h_slot, self.input_candidates(states, b))
            else:
                value_logits = self._shape(self.op_mutator(h_slot))
            value = self._pick(value_logits, given.value if given else None, rng)
            lp2, ent2 = _log_prob_entropy(value_logits, value)
            log_prob = log_prob + lp + lp2
            entropy = entropy + ent + ent2
            chosen.append(Action(b, SLOTS[slot_i], value))
        return Decision(chosen, log_prob, entropy)

    @staticmethod
    def _pick(logits: torch.Tensor, given: int | None, rng: random.Random | None) -> int:
        if given is not None:
            if not 0 <= given < logits.numel():
                raise SnapshotError(f"action value {given} out of range")
            return given
        if rng is None:
            raise ValueError("sampling needs an rng")
        probs = torch.softmax(logits.detach().double(), 0).tolist()
        u, acc = rng.random(), 0.0
        for i, p in enumerate(probs):
            acc += p
            if u < acc:
                return i
        return len(probs) - 1

    def sample(self, genotype: Genotype, rng: random.Random) -> tuple[list[Action], float, float]:
        with torch.no_grad():
            d = self.decide(genotype, rng=rng)
        return d.actions, float(d.log_prob), float(d.entropy)

    def log_prob(self, genotype: Genotype, actions: Sequence[Action]) -> float:
        with torch.no_grad():
            return float(self.decide(genotype, actions=actions).log_prob)


def _log_prob_entropy(logits: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits, 0)
    return logp[index], -(logp.exp() * logp).sum()


@dataclass
class Episode:
    """One child: the parent genotype, the sampled actions, the log-probability under
    the snapshot that sampled them, the child's fitness and, for the parent-relative
    reward, the parent's. `reward`, when given, is the whole episode reward as recorded
    when the child was made (ControllerConfig.episode_reward with the entropy of the
    sampled decisions); without it the trainer computes it, with the entropy under its
    current policy (equal for an episode sampled by the current snapshot)."""
    parent: Genotype
    actions: list[Action]
    sampled_log_prob: float
    fitness: float
    parent_fitness: float | None = None
    reward: float | None = None


@dataclass
class _Pending:
    """An episode folded into the baseline, waiting for the next Adam step."""
    parent: Genotype
    actions: list[Action]
    sampled_log_prob: float
    advantage: float

    def to_plain(self) -> dict[str, Any]:
        return {"parent": self.parent.to_text(), "actions": actions_to_json(self.actions),
                "log_prob": self.sampled_log_prob, "advantage": self.advantage}

    @classmethod
    def from_plain(cls, d: dict[str, Any]) -> _Pending:
        return cls(parse(d["parent"]), actions_from_json(d["actions"]), float(d["log_prob"]),
                   float(d["advantage"]))


class ControllerTrainer:
    """REINFORCE with an EMA baseline over the episode reward (fitness term plus the
    entropy bonus). Each update folds its episodes into the baseline; every
    `config.batch` episodes they make one Adam step. Episodes sampled under older
    snapshots are corrected with a PPO-style clipped importance ratio: for on-policy
    episodes (ratio 1) it is exactly REINFORCE."""

    def __init__(self, controller: MutationController, *, version: int = 0,
                 baseline: float | None = None, episodes_seen: int = 0,
                 pending: list[_Pending] | None = None, steps: int = 0) -> None:
        self.controller = controller
        self.config = controller.config
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=self.config.lr)
        self.version = version
        self.baseline = baseline
        self.episodes_seen = episodes_seen
        self.pending: list[_Pending] = pending or []
        self.steps = steps

    @classmethod
    def fresh(cls, config: ControllerConfig, seed: int = 0) -> ControllerTrainer:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(MutationController(config))

    def _episode_reward(self, e: Episode) -> float:
        if e.reward is not None:
            return float(e.reward)
        entropy = 0.0
        if self.config.entropy_in == "reward":
            with torch.no_grad():
                entropy = float(self.controller.decide(e.parent, actions=e.actions).entropy)
        return self.config.episode_reward(e.fitness, e.parent_fitness, entropy)

    def update(self, episodes: Sequence[Episode]) -> dict[str, float]:
        """Fold `episodes` in; one Adam step when `config.batch` episodes are waiting.
        Every call is a new version (the episodes are consumed either way); the policy
        changes only on the calls that step."""
        if not episodes:
            raise ValueError("no episodes")
        c = self.config
        rewards = []
        for e in episodes:
            r = self._episode_reward(e)
            self.baseline = r if self.baseline is None else (
                c.baseline_decay * self.baseline + (1 - c.baseline_decay) * r)
            rewards.append(r)
            self.pending.append(_Pending(e.parent, list(e.actions), e.sampled_log_prob,
                                         r - self.baseline))
        assert self.baseline is not None  # set by the first episode
        stats = {"mean_reward": sum(rewards) / len(rewards), "baseline": float(self.baseline),
                 "episodes": float(len(episodes)), "stepped": 0.0,
                 "pending": float(len(self.pending))}
        if len(self.pending) >= c.batch:
            stats.update(self._step())
        stats["entropy"] = self._policy_entropy(episodes)
        self.version += 1
        self.episodes_seen += len(episodes)
        return stats

    def _policy_entropy(self, episodes: Sequence[Episode]) -> float:
        """The policy's entropy as this update leaves it (the dashboard's controller
        view): for each episode, the entropies of the 2B distributions its mutation
        drew from (slot, then value, per block, along its actions), summed, in nats;
        the mean over the episodes. A policy that stops exploring shows it falling."""
        with torch.no_grad():
            return sum(float(self.controller.decide(e.parent, actions=e.actions).entropy)
                       for e in episodes) / len(episodes)

    def _step(self) -> dict[str, float]:
        c = self.config
        self.controller.train()
        losses, ratios = [], []
        clipped = 0
        for e in self.pending:
            d = self.controller.decide(e.parent, actions=e.actions)
            ratio = torch.exp(d.log_prob - e.sampled_log_prob)
            clipped_ratio = torch.clamp(ratio, 1 - c.ratio_clip, 1 + c.ratio_clip)
            surrogate = torch.minimum(ratio * e.advantage, clipped_ratio * e.advantage)
            loss = -surrogate
            if c.entropy_in == "loss":
                loss = loss - c.entropy_weight * d.entropy
            losses.append(loss)
            ratios.append(float(ratio.detach()))
            clipped += int(bool(ratio.detach() != clipped_ratio.detach()))
        loss = torch.stack(losses).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        n = len(self.pending)
        self.pending = []
        return {"loss": float(loss.detach()), "stepped": 1.0, "pending": 0.0,
                "batch": float(n), "ratio_mean": sum(ratios) / n, "ratio_min": min(ratios),
                "ratio_max": max(ratios), "ratio_clipped": clipped / n}

    # -- snapshots ------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"format": SNAPSHOT_FORMAT, "config": asdict(self.config),
                    "model": self.controller.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "baseline": self.baseline,
                    "version": self.version, "episodes_seen": self.episodes_seen,
                    "steps": self.steps, "pending": [p.to_plain() for p in self.pending]},
                   buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, expected: ControllerConfig | None = None
                   ) -> ControllerTrainer:
        try:
            payload = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as exc:
            raise SnapshotError(f"controller snapshot is unreadable: "
                                f"{str(exc).splitlines()[0][:200]}") from None
        fmt = payload.get("format") if isinstance(payload, dict) else None
        if fmt in OLD_FORMATS:
            raise SnapshotError(f"controller snapshot format {fmt} is older than this "
                                f"renas-db ({SNAPSHOT_FORMAT}): {OLD_FORMATS[fmt]}; start a "
                                f"new search, or resume this one with the renas-db that "
                                f"made it")
        if fmt != SNAPSHOT_FORMAT:
            raise SnapshotError("not a renas-db controller snapshot")
        try:
            config = ControllerConfig(**payload["config"])
        except (TypeError, ValueError) as exc:
            raise SnapshotError(f"controller snapshot has a bad config: {exc}") from None
        if expected is not None:
            for key in ("blocks", "hidden", "input_attention", "seed_encoder"):
                if getattr(config, key) != getattr(expected, key):
                    raise SnapshotError(
                        f"controller snapshot was made for {key}={getattr(config, key)}, "
                        f"this search has {key}={getattr(expected, key)}")
            config = expected
        controller = MutationController(config)
        try:
            controller.load_state_dict(payload["model"])
            pending = [_Pending.from_plain(p) for p in payload["pending"]]
            trainer = cls(controller, version=int(payload["version"]),
                          baseline=payload["baseline"],
                          episodes_seen=int(payload["episodes_seen"]), pending=pending,
                          steps=int(payload["steps"]))
            trainer.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, KeyError, ValueError, TypeError, RenasError) as exc:
            raise SnapshotError(f"controller snapshot does not fit this controller: "
                                f"{str(exc).splitlines()[0][:200]}") from None
        return trainer
