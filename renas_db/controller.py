"""The reinforced mutation controller of RENAS and its asynchronous REINFORCE trainer."""
from __future__ import annotations

import io
import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from renas_db.errors import SnapshotError
from renas_db.space import OPS, SLOTS, Action, Genotype, vocab_size

SNAPSHOT_FORMAT = "renas-controller-1"


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

    def reward(self, fitness: float) -> float:
        f = min(max(float(fitness), 0.0), self.fitness_clip)
        return math.tan(f * math.pi / 2)


def controller_config(search_config: Any) -> ControllerConfig:
    c = search_config
    return ControllerConfig(blocks=c.blocks, hidden=c.controller_hidden,
                            temperature=c.temperature, tanh_constant=c.tanh_constant,
                            lr=c.controller_lr, entropy_weight=c.entropy_weight,
                            baseline_decay=c.baseline_decay, ratio_clip=c.ratio_clip)


@dataclass
class Decision:
    actions: list[Action]
    log_prob: torch.Tensor
    entropy: torch.Tensor


class MutationController(nn.Module):
    """Embedding -> BiLSTM over the 5B tokens; per block a router picks the slot to
    change, then the input mutator (attention over candidate inputs) or the op mutator
    proposes its new value."""

    def __init__(self, config: ControllerConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.embedding = nn.Embedding(vocab_size(config.blocks), h)
        self.encoder = nn.LSTM(h, h, batch_first=True, bidirectional=True)
        self.begin_states = nn.Parameter(torch.zeros(2, 2 * h))  # cell c-2, cell c-1
        self.router = nn.Linear(2 * h, 1)
        self.input_mutator = nn.Linear(4 * h, 1)
        self.op_mutator = nn.Linear(2 * h, len(OPS))
        for p in self.parameters():
            nn.init.normal_(p, 0.0, 0.01)

    def _shape(self, logits: torch.Tensor) -> torch.Tensor:
        c = self.config
        return c.tanh_constant * torch.tanh(logits / c.temperature)

    def decide(self, genotype: Genotype, *, actions: Sequence[Action] | None = None,
               rng: random.Random | None = None, greedy: bool = False) -> Decision:
        """Sample (rng), take the argmax (greedy) or score given `actions`."""
        if genotype.n_blocks != self.config.blocks:
            raise SnapshotError(f"controller is for {self.config.blocks} blocks, genotype "
                                f"has {genotype.n_blocks}")
        tokens = torch.tensor([genotype.tokens()])
        states, _ = self.encoder(self.embedding(tokens))
        states = states[0]  # (5B, 2h)
        chosen: list[Action] = []
        log_prob = states.new_zeros(())
        entropy = states.new_zeros(())
        for b in range(genotype.n_blocks):
            slot_states = states[5 * b:5 * b + 4]
            router_logits = self._shape(self.router(slot_states).squeeze(-1))
            given = actions[b] if actions is not None else None
            slot_i = self._pick(router_logits, SLOTS.index(given.slot) if given else None,
                                rng, greedy)
            lp, ent = _log_prob_entropy(router_logits, slot_i)
            h_slot = slot_states[slot_i]
            if slot_i < 2:
                combiners = [states[5 * j + 4] for j in range(b)]
                candidates = torch.stack([self.begin_states[0], self.begin_states[1],
                                          *combiners])
                pair = torch.cat([h_slot.expand(len(candidates), -1), candidates], dim=1)
                value_logits = self._shape(self.input_mutator(pair).squeeze(-1))
            else:
                value_logits = self._shape(self.op_mutator(h_slot))
            value = self._pick(value_logits, given.value if given else None, rng, greedy)
            lp2, ent2 = _log_prob_entropy(value_logits, value)
            log_prob = log_prob + lp + lp2
            entropy = entropy + ent + ent2
            chosen.append(Action(b, SLOTS[slot_i], value))
        return Decision(chosen, log_prob, entropy)

    @staticmethod
    def _pick(logits: torch.Tensor, given: int | None, rng: random.Random | None,
              greedy: bool) -> int:
        if given is not None:
            if not 0 <= given < logits.numel():
                raise SnapshotError(f"action value {given} out of range")
            return given
        if greedy:
            return int(torch.argmax(logits))
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

    def greedy(self, genotype: Genotype) -> list[Action]:
        with torch.no_grad():
            return self.decide(genotype, greedy=True).actions

    def log_prob(self, genotype: Genotype, actions: Sequence[Action]) -> float:
        with torch.no_grad():
            return float(self.decide(genotype, actions=actions).log_prob)


def _log_prob_entropy(logits: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits, 0)
    return logp[index], -(logp.exp() * logp).sum()


@dataclass
class Episode:
    """One child: the parent genotype, the sampled actions, the log-probability under
    the snapshot that sampled them, and the child's fitness."""
    parent: Genotype
    actions: list[Action]
    sampled_log_prob: float
    fitness: float


class ControllerTrainer:
    """REINFORCE with an EMA baseline and an entropy bonus. Episodes sampled under older
    snapshots are corrected with a PPO-style clipped importance ratio: for on-policy
    episodes (ratio 1) it is exactly REINFORCE."""

    def __init__(self, controller: MutationController, *, version: int = 0,
                 baseline: float | None = None, episodes_seen: int = 0) -> None:
        self.controller = controller
        self.config = controller.config
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=self.config.lr)
        self.version = version
        self.baseline = baseline
        self.episodes_seen = episodes_seen

    @classmethod
    def fresh(cls, config: ControllerConfig, seed: int = 0) -> "ControllerTrainer":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(MutationController(config))

    def update(self, episodes: Sequence[Episode]) -> dict[str, float]:
        if not episodes:
            raise ValueError("no episodes")
        c = self.config
        advantages, rewards = [], []
        for e in episodes:
            r = c.reward(e.fitness)
            self.baseline = r if self.baseline is None else (
                c.baseline_decay * self.baseline + (1 - c.baseline_decay) * r)
            rewards.append(r)
            advantages.append(r - self.baseline)
        self.controller.train()
        losses, ratios = [], []
        clipped = 0
        for e, adv in zip(episodes, advantages):
            d = self.controller.decide(e.parent, actions=e.actions)
            ratio = torch.exp(d.log_prob - e.sampled_log_prob)
            clipped_ratio = torch.clamp(ratio, 1 - c.ratio_clip, 1 + c.ratio_clip)
            surrogate = torch.minimum(ratio * adv, clipped_ratio * adv)
            losses.append(-surrogate - c.entropy_weight * d.entropy)
            ratios.append(float(ratio.detach()))
            clipped += int(bool(ratio.detach() != clipped_ratio.detach()))
        loss = torch.stack(losses).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.version += 1
        self.episodes_seen += len(episodes)
        return {"loss": float(loss.detach()), "mean_reward": sum(rewards) / len(rewards),
                "baseline": float(self.baseline), "ratio_mean": sum(ratios) / len(ratios),
                "ratio_min": min(ratios), "ratio_max": max(ratios),
                "ratio_clipped": clipped / len(ratios), "episodes": len(episodes)}

    # -- snapshots ------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"format": SNAPSHOT_FORMAT, "config": asdict(self.config),
                    "model": self.controller.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "baseline": self.baseline,
                    "version": self.version, "episodes_seen": self.episodes_seen}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, expected: ControllerConfig | None = None
                   ) -> "ControllerTrainer":
        try:
            payload = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as exc:
            raise SnapshotError(f"controller snapshot is unreadable: "
                                f"{str(exc).splitlines()[0][:200]}") from None
        if not isinstance(payload, dict) or payload.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError("not a renas-db controller snapshot")
        try:
            config = ControllerConfig(**payload["config"])
        except TypeError as exc:
            raise SnapshotError(f"controller snapshot has a bad config: {exc}") from None
        if expected is not None:
            for key in ("blocks", "hidden"):
                if getattr(config, key) != getattr(expected, key):
                    raise SnapshotError(
                        f"controller snapshot was made for {key}={getattr(config, key)}, "
                        f"this search has {key}={getattr(expected, key)}")
            config = expected
        controller = MutationController(config)
        try:
            controller.load_state_dict(payload["model"])
            trainer = cls(controller, version=int(payload["version"]),
                          baseline=payload["baseline"],
                          episodes_seen=int(payload["episodes_seen"]))
            trainer.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise SnapshotError(f"controller snapshot does not fit this controller: "
                                f"{str(exc).splitlines()[0][:200]}") from None
        return trainer
