"""Composer: a decoder-only transformer over step tokens, with an exact likelihood over pitch sets.

One readable file in the manner of nanoGPT (github.com/karpathy/nanoGPT, ``model.py``): a config
dataclass, pre-LN transformer blocks with causal self-attention, tied input/output embeddings,
and a sampling loop with a KV cache.

Tokens are those of :mod:`encore.composer.tokens`: each time step is its pitches in ascending
order followed by ``EOS_STEP``. Each token's position is given twice over, as learned embeddings
of its *step* (which time step it belongs to) and its *slot* (its place within the step), so the
model knows the beat and the voice a token stands for without counting tokens.

Exact likelihood. At every position the next-token distribution is renormalised over the tokens
the step grammar allows there, and only those: after ``BOS``, a conditioning token or
``EOS_STEP``, any pitch in ``[pitch_low, pitch_high]`` or ``EOS_STEP``; after a pitch ``p``,
a higher pitch in range (while the step has fewer than ``max_notes`` pitches) or ``EOS_STEP``.
The same mask is applied in training, evaluation and sampling. Every set of at most
``max_notes`` pitches in range has exactly one allowed token sequence, and the masked
probabilities of the allowed tokens sum to one at each position, so the product over a step's
tokens is a proper distribution over that step's pitch *set* given the past. The NLL per time
step reported by :meth:`Composer.nll_per_step` is therefore exact and comparable with the
frame-level figures published for JSB Chorales (which score the same sets with 88 independent or
autoregressive binary outputs).
"""

import json
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

from encore.composer.tokens import BOS, EOS_STEP, PAD, PITCH_OFFSET, STYLE_OFFSET, VOCAB_SIZE, DataError, encode

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"


@dataclass
class ComposerConfig:
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    d_ff: int = 1024
    dropout: float = 0.1  # with transposed training pieces (TrainConfig.transpose) little more is needed
    # Longest piece, in time steps, the learned step positions cover (JSB Chorales: 160 at most).
    max_steps: int = 256
    # Most pitches in one step; bigger chords get no probability. Twelve leaves room for piano music.
    max_notes: int = 12
    # The pitches the model can sound. All of MIDI by default, so nothing about a test set is assumed.
    pitch_low: int = 0
    pitch_high: int = 127
    vocab_size: int = VOCAB_SIZE

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_head {self.n_head}")
        if not 0 <= self.pitch_low <= self.pitch_high <= 127:
            raise ValueError(f"pitch range {self.pitch_low}-{self.pitch_high} is not within MIDI 0-127")
        if self.max_notes < 1 or self.max_steps < 1:
            raise ValueError("max_notes and max_steps must be at least 1")


def is_music(tokens: torch.Tensor) -> torch.Tensor:
    """Where ``tokens`` are pitches or EOS_STEP: the tokens a likelihood scores."""
    return (tokens == EOS_STEP) | ((tokens >= PITCH_OFFSET) & (tokens < STYLE_OFFSET))


def positions(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step and slot of every token of ``tokens`` [B, T].

    Step 0 holds BOS and the conditioning tokens; a piece's steps are 1, 2, ... and an EOS_STEP
    belongs to the step it ends. A token's slot is its place in its step: 0 for the lowest pitch,
    and for EOS_STEP the number of pitches in the step; prefix tokens and padding have slot 0."""
    prefix = (tokens == BOS) | (tokens >= STYLE_OFFSET)
    eos = tokens == EOS_STEP
    steps = torch.where(prefix, 0, 1 + torch.cumsum(eos, 1) - eos.long())
    index = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    last_boundary = torch.cummax(torch.where(prefix | eos, index, -1), 1).values
    previous_boundary = F.pad(last_boundary[:, :-1], (1, 0), value=-1)
    slots = torch.where(prefix, 0, index - previous_boundary - 1)
    pad = tokens == PAD
    return steps.masked_fill(pad, 0), slots.masked_fill(pad, 0)


class KVCache:
    """Keys and values of every layer for one batch of sequences, up to ``capacity`` tokens."""

    def __init__(self, config: ComposerConfig, batch: int, capacity: int, device, dtype):
        shape = (config.n_layer, batch, config.n_head, capacity, config.d_model // config.n_head)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ComposerConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None, start: int) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_head, width // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is not None:
            keys, values = cache
            keys[:, :, start : start + length] = k
            values[:, :, start : start + length] = v
            k, v = keys[:, :, : start + length], values[:, :, : start + length]
        # Either a whole prefix from position 0 (causal) or one new token that may see all before it.
        assert length == 1 or start == 0, "a block of several tokens must start at position 0"
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=length > 1
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(batch, length, width)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ComposerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff),
            nn.GELU(),
            nn.Linear(config.d_ff, config.d_model),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, cache, start: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))


class Composer(nn.Module):
    """The composition model. ``forward`` scores token batches; ``generate`` samples; see the module docstring."""

    def __init__(self, config: ComposerConfig):
        super().__init__()
        self.config = config
        self.token_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.step_emb = nn.Embedding(config.max_steps + 1, config.d_model)  # + step 0, the prefix
        self.slot_emb = nn.Embedding(config.max_notes + 1, config.d_model)  # + the EOS_STEP of a full step
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.token_emb.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # Residual projections scaled down with depth so the residual stream starts near unit size (GPT-2).
        for name, parameter in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

        vocab_pitch = torch.arange(config.vocab_size) - PITCH_OFFSET
        self.register_buffer("vocab_pitch", vocab_pitch, persistent=False)
        in_range = (vocab_pitch >= config.pitch_low) & (vocab_pitch <= config.pitch_high)
        self.register_buffer("pitch_in_range", in_range, persistent=False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    @property
    def device(self) -> torch.device:
        return self.token_emb.weight.device

    # ---- scoring ----------------------------------------------------------------------

    def _logits(self, tokens, steps, slots, cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        x = self.drop(self.token_emb(tokens) + self.step_emb(steps) + self.slot_emb(slots))
        for layer, block in enumerate(self.blocks):
            x = block(x, None if cache is None else (cache.keys[layer], cache.values[layer]), start)
        return self.head(self.ln_f(x))

    def next_token_mask(
        self, tokens: torch.Tensor, slots: torch.Tensor, pitch_filter: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Which tokens may follow each of ``tokens`` (given its slot): bool [..., vocab].

        ``pitch_filter`` [vocab] further limits the pitches (a key constraint); EOS_STEP is always allowed."""
        is_pitch = (tokens >= PITCH_OFFSET) & (tokens < STYLE_OFFSET)
        current = torch.where(is_pitch, tokens - PITCH_OFFSET, -1)
        room = torch.where(is_pitch, slots + 1, 0) < self.config.max_notes
        allowed = self.pitch_in_range if pitch_filter is None else self.pitch_in_range & pitch_filter
        allowed = allowed & (self.vocab_pitch > current[..., None]) & room[..., None]
        allowed[..., EOS_STEP] = True
        return allowed

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score a batch: the masked, renormalised next-token log-probabilities [B, T, vocab] (float32),
        and each sequence's NLL in nats [B], summed over its pitch and EOS_STEP tokens after the prefix.

        ``tokens`` [B, T] are padded on the right with PAD; padding is never scored."""
        steps, slots = positions(tokens)
        logits = self._logits(tokens, steps, slots).float()
        log_probs = logits.masked_fill(~self.next_token_mask(tokens, slots), float("-inf")).log_softmax(-1)
        targets = tokens[:, 1:]
        picked = log_probs[:, :-1].gather(-1, targets[..., None]).squeeze(-1)
        nll = -picked.masked_fill(~is_music(targets), 0.0).sum(1)
        return log_probs, nll

    def encode_steps(
        self, pieces: Sequence[Sequence[Iterable[int]]], conditions: Sequence[Sequence[int]] | None = None
    ) -> list[list[int]]:
        """Token lists of ``pieces`` (lists of steps) after their ``conditions`` (conditioning tokens,
        one list per piece; none by default), checked against what the model can score."""
        config = self.config
        if conditions is not None and len(conditions) != len(pieces):
            raise ValueError(f"{len(conditions)} lists of conditions for {len(pieces)} pieces")
        encoded = []
        for index, steps in enumerate(pieces):
            try:
                tokens = encode(steps, conditions[index] if conditions is not None else ())
            except DataError as error:
                raise DataError(f"piece {index} {error}") from None
            if len(steps) > config.max_steps:
                raise DataError(f"piece {index}: {len(steps)} steps; the model covers {config.max_steps}")
            for number, step in enumerate(steps):
                pitches = set(step)
                if len(pitches) > config.max_notes:
                    raise DataError(f"piece {index} step {number}: {len(pitches)} pitches, over {config.max_notes}")
                if pitches and not config.pitch_low <= min(pitches) <= max(pitches) <= config.pitch_high:
                    raise DataError(
                        f"piece {index} step {number}: pitches {sorted(pitches)} outside the model's range "
                        f"{config.pitch_low}-{config.pitch_high}"
                    )
            encoded.append(tokens)
        return encoded

    def pad(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Token lists as one [B, T] tensor on the model's device, padded on the right with PAD."""
        batch = torch.full((len(sequences), max(map(len, sequences))), PAD, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            batch[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        return batch.to(self.device)

    @torch.no_grad()
    def nll_total(
        self,
        pieces: Sequence[Sequence[Iterable[int]]],
        batch_size: int = 16,
        conditions: Sequence[Sequence[int]] | None = None,
    ) -> tuple[float, int]:
        """Total NLL (nats) of ``pieces`` given their ``conditions`` and their number of time steps,
        in evaluation mode."""
        encoded = self.encode_steps(pieces, conditions)
        # Similar lengths batched together: less padding to compute.
        order = sorted(range(len(encoded)), key=lambda index: len(encoded[index]))
        was_training = self.training
        self.eval()
        try:
            total = 0.0
            for begin in range(0, len(order), batch_size):
                _, nll = self(self.pad([encoded[index] for index in order[begin : begin + batch_size]]))
                total += nll.double().sum().item()
        finally:
            self.train(was_training)
        return total, sum(map(len, pieces))

    def nll_per_step(
        self,
        pieces: Sequence[Sequence[Iterable[int]]],
        batch_size: int = 16,
        conditions: Sequence[Sequence[int]] | None = None,
    ) -> float:
        """Exact NLL in nats per time step: the NLL of every pitch and EOS_STEP token after the prefix
        (BOS and the conditions, which are given), under the masked and renormalised distribution,
        divided by the number of steps."""
        total, steps = self.nll_total(pieces, batch_size, conditions)
        return total / steps

    # ---- sampling ---------------------------------------------------------------------

    def _pitch_filter(self, pitch_classes: Iterable[int] | None) -> torch.Tensor | None:
        if pitch_classes is None:
            return None
        allowed = torch.tensor(sorted({pitch_class % 12 for pitch_class in pitch_classes}), device=self.device)
        if not len(allowed):
            raise ValueError("pitch_classes is empty: no pitch could sound")
        return torch.isin(self.vocab_pitch % 12, allowed)

    @torch.no_grad()
    def generate(
        self,
        prompt: Sequence[int],
        max_steps: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        pitch_classes: Iterable[int] | None = None,
        use_cache: bool = True,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> list[int]:
        """Continue ``prompt`` (tokens as from ``tokens.encode``, starting with BOS) by ``max_steps``
        time steps; returns the prompt followed by the new tokens, ending with EOS_STEP.

        Each token is drawn from the masked distribution (the step grammar, and ``pitch_classes``
        if given: only pitches of those classes, e.g. ``tokens.key_pitch_classes(7, "major")``),
        divided by ``temperature``, cut to the ``top_k`` likeliest tokens and then to the smallest
        set holding ``top_p`` of the mass. The same seed gives the same tokens. ``use_cache=False``
        recomputes the whole sequence for every token (for comparison only). Past ``deadline`` (a
        ``time.monotonic()`` value), or once ``cancelled`` is set, it raises :class:`TimeoutError`, so a
        caller can bound its wait and stop work nobody waits for any more."""
        config = self.config
        if not prompt or prompt[0] != BOS or PAD in prompt or not all(0 <= t < config.vocab_size for t in prompt):
            raise ValueError("prompt must be a token list that starts with BOS and holds no PAD")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, not {max_steps}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {top_p}")
        tokens = torch.tensor([list(prompt)], device=self.device)
        steps, slots = positions(tokens)
        step, slot = steps[0, -1].item(), slots[0, -1].item()
        if int(slots.max()) > config.max_notes:
            raise ValueError(f"prompt has a step of more than {config.max_notes} pitches")
        if int(steps.max()) + max_steps > config.max_steps:
            raise ValueError(f"prompt and new steps exceed the model's {config.max_steps} steps")
        pitch_filter = self._pitch_filter(pitch_classes)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        cache = None
        if use_cache:
            capacity = len(prompt) + max_steps * (config.max_notes + 1)
            cache = KVCache(config, 1, capacity, self.device, self.token_emb.weight.dtype)

        was_training = self.training
        self.eval()
        try:
            out = list(prompt)
            logits = self._logits(tokens, steps, slots, cache)[0, -1]
            finished = 0
            while True:
                allowed = self.next_token_mask(
                    torch.tensor(out[-1], device=self.device), torch.tensor(slot, device=self.device), pitch_filter
                )
                token = _sample(logits, allowed, temperature, top_k, top_p, generator)
                # The new token's position: the step goes on after a pitch, a new one starts otherwise.
                step, slot = (step, slot + 1) if PITCH_OFFSET <= out[-1] < STYLE_OFFSET else (step + 1, 0)
                out.append(token)
                if token == EOS_STEP:
                    finished += 1
                    if finished == max_steps:
                        return out
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"sampling stopped after {finished} of {max_steps} steps: out of time")
                    if cancelled is not None and cancelled.is_set():
                        raise TimeoutError(f"sampling stopped after {finished} of {max_steps} steps: cancelled")
                if cache is not None:
                    new = torch.tensor([[token]], device=self.device)
                    where = (torch.tensor([[step]], device=self.device), torch.tensor([[slot]], device=self.device))
                    logits = self._logits(new, *where, cache, start=len(out) - 1)[0, -1]
                else:
                    everything = torch.tensor([out], device=self.device)
                    logits = self._logits(everything, *positions(everything))[0, -1]
        finally:
            self.train(was_training)

    # ---- files ------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> None:
        """Write the weights and the config to ``folder`` (a model-store version's files)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "Composer":
        folder = Path(folder)
        model = cls(ComposerConfig(**json.loads((folder / CONFIG_FILE).read_text())))
        model.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        return model.to(device).eval()


def _sample(logits, allowed, temperature, top_k, top_p, generator) -> int:
    """One token from masked ``logits`` [vocab] with temperature, top-k and top-p (nucleus) cuts."""
    logits = logits.float().masked_fill(~allowed, float("-inf")) / temperature
    if top_k is not None and top_k < logits.numel():
        kth_largest = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = logits.softmax(-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(descending=True, stable=True)
        # Keep the likeliest tokens until they hold top_p of the mass; the likeliest always stays.
        sorted_probs[sorted_probs.cumsum(0) - sorted_probs >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())
