"""Generation shared by every bertkit model that predicts the next token: the encoder-decoder
(:class:`~bertkit.modeling.seq2seq.TransformerSeq2Seq`) and the decoder-only LM
(:class:`~bertkit.modeling.gpt.GPT2LMHeadModel`).

A model takes part through one function, a :data:`StepFn`: ``step(tokens, cache)`` returns the
next-token logits (B, V) after ``tokens`` (B, L). With a :class:`KVCache` the step feeds only
the tokens the cache has not seen (``tokens[:, cache.length:]``) and appends their keys and
values; without one it recomputes the whole prefix (same numbers: tests compare the two).
Everything else is written once here:

- greedy decoding and sampling (temperature, top-k, nucleus top-p), one loop, also as a stream
  of token ids (:func:`stream_tokens`) for servers and terminals;
- beam search with the GNMT length penalty (Wu et al., 2016): ``lp(L) = ((5 + L) / 6) ** alpha``,
  hypotheses ranked by ``sum of token log-probs / lp(L)`` (L counts generated tokens, eos
  included);
- the repetition penalty of CTRL (Keskar et al., 2019), as transformers applies it: the logit
  of every token already in the sequence is divided by the penalty when positive and
  multiplied by it when negative;
- stop strings (:class:`StopStrings`): a row ends once its decoded text contains one.

Shapes: B rows (sources x returned sequences, or x beams), L tokens so far, V vocabulary,
K beams per source, N heads, D head size, P cached positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch


# ============================================================================ the cache
@dataclass
class LayerCache:
    """One layer's cached keys/values (cross-attention: encoder-decoder models only)."""

    self_keys: torch.Tensor | None = None      # (B, N, P, D)
    self_values: torch.Tensor | None = None    # (B, N, P, D)
    cross_keys: torch.Tensor | None = None     # (B, N, S, D)
    cross_values: torch.Tensor | None = None   # (B, N, S, D)

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' keys/values (B, N, T, D); returns all of them (B, N, P+T, D)."""
        if self.self_keys is not None:
            keys = torch.cat([self.self_keys, keys], dim=2)                        # (B, N, P+T, D)
            values = torch.cat([self.self_values, values], dim=2)                  # (B, N, P+T, D)
        self.self_keys, self.self_values = keys, values
        return keys, values


class KVCache:
    """Keys/values of every layer for incremental decoding: self-attention entries grow by the
    positions fed, cross-attention entries are computed on the first step and kept. Create an
    empty one with ``KVCache(num_layers)`` for one decoding run."""

    def __init__(self, num_layers: int):
        self.layers = [LayerCache() for _ in range(num_layers)]

    @property
    def length(self) -> int:
        """P: positions already cached."""
        keys = self.layers[0].self_keys
        return 0 if keys is None else keys.size(2)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the self-attention entries of ``rows`` (a (B,) index; beam search's surviving
        beams). Cross-attention entries are left alone: beam search only moves rows among the
        beams of one source, whose cross-attention keys/values are identical."""
        for layer in self.layers:
            if layer.self_keys is not None:
                layer.self_keys = layer.self_keys.index_select(0, rows)
                layer.self_values = layer.self_values.index_select(0, rows)


# tokens (B, L), cache or None -> next-token logits (B, V)
StepFn = Callable[[torch.Tensor, "KVCache | None"], torch.Tensor]


# ============================================================================ settings / output
@dataclass
class GenerationSettings:
    """How to decode; :meth:`check` says what is wrong in one line (a ValueError).

    ``max_new_tokens`` counts generated tokens, eos included; eos is forbidden until
    ``min_new_tokens`` have been generated. ``num_beams`` 1 = greedy (or sampling). Sampling
    draws from softmax(logits / temperature) restricted to the ``top_k`` most likely tokens
    (0 = all) and to the nucleus of probability ``top_p``. ``repetition_penalty`` > 1 lowers
    tokens already in the sequence (1 = off). ``use_cache`` False recomputes every prefix
    (same tokens; for checks and benchmarks).
    """

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = True
    num_return_sequences: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    use_cache: bool = True

    def check(self, longest: int, what: str = "max_new_tokens",
              why: str = "the positions the model has left") -> None:
        """Raise a one-line ValueError for a setting no decoding can use; ``longest`` is the
        most tokens the model can still generate (``why`` says what bounds it)."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or not 1 <= self.max_new_tokens <= longest:
            raise ValueError(f"{what} must be in [1, {longest}] ({why}), got "
                             f"{self.max_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.do_sample and self.num_beams > 1:
            raise ValueError("do_sample=True with num_beams > 1 (beam sampling) is not supported")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be <= "
                             f"num_beams ({self.num_beams})")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError("greedy decoding returns one sequence per source; use num_beams >= "
                             "num_return_sequences or do_sample=True")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be positive, got {self.repetition_penalty}")


@dataclass
class GenerationOutput:
    """What generation returns; rows are grouped by input (the R sequences of input b are rows
    b*R ... b*R+R-1, best first for beam search)."""

    sequences: torch.Tensor             # (B*R, L) generated ids only, eos if produced, then pad
    scores: torch.Tensor                # (B*R,) sum of the log-probs of the generated tokens
    normalized_scores: torch.Tensor     # (B*R,) scores / lp(lengths): the ranking score
    lengths: torch.Tensor               # (B*R,) generated tokens counted in scores (eos included)


@dataclass
class Decoder:
    """A model seen by generation: its step function and the ids decoding needs."""

    step: StepFn
    num_layers: int
    eos_token_id: int
    pad_token_id: int


class StopStrings:
    """Stop strings: a row ends once ``decode(its generated ids)`` contains one of ``strings``
    (the token that completes it is kept; :meth:`cut` removes the text from the string on)."""

    def __init__(self, strings: Sequence[str], decode: Callable[[list[int]], str]):
        if isinstance(strings, str):
            strings = [strings]
        if any(not isinstance(s, str) or not s for s in strings):
            raise ValueError(f"stop strings must be non-empty strings, got {list(strings)!r}")
        self.strings = list(strings)
        self.decode = decode

    def hit(self, generated: list[int]) -> bool:
        text = self.decode(generated)
        return any(s in text for s in self.strings)

    def cut(self, text: str) -> str:
        """``text`` up to (not including) the first stop string in it."""
        ends = [text.find(s) for s in self.strings if s in text]
        return text[:min(ends)] if ends else text


# ============================================================================ one step
def length_penalty(length: torch.Tensor | float, alpha: float) -> torch.Tensor | float:
    """GNMT's length penalty (Wu et al., 2016): ``((5 + length) / 6) ** alpha``; 1 when
    alpha = 0 (plain sum of log-probs)."""
    return ((5.0 + length) / 6.0) ** alpha


def apply_repetition_penalty(logits: torch.Tensor, tokens: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL's penalty: logits (B, V) of the tokens in ``tokens`` (B, L) divided by ``penalty``
    where positive, multiplied where negative."""
    if penalty == 1.0:
        return logits
    seen = logits.gather(1, tokens)                                                 # (B, L)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, tokens, seen)                                          # (B, V)


def step_logprobs(decoder: Decoder, tokens: torch.Tensor, cache: KVCache | None,
                  generated: int, settings: GenerationSettings) -> torch.Tensor:
    """Log-probs (B, V) of the next token after ``tokens`` (B, L), ``generated`` of them new:
    the repetition penalty and the min-length rule applied."""
    logits = decoder.step(tokens, cache).float()                                    # (B, V)
    logits = apply_repetition_penalty(logits, tokens, settings.repetition_penalty)
    if generated < settings.min_new_tokens:
        logits[:, decoder.eos_token_id] = -math.inf
    return logits.log_softmax(dim=-1)                                               # (B, V)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits (B, V) with -inf outside the ``top_k`` largest (0 = all; ties at the k-th value
    are kept) and outside the nucleus: the most likely tokens, most likely first, up to and
    including the first at which their probability reaches ``top_p`` (so the most likely
    token is always kept)."""
    if 0 < top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]                             # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)                 # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        before = probs.cumsum(dim=-1) - probs
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, before >= top_p)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def sample_next_tokens(logprobs: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from softmax(logprobs / temperature) restricted to the top-k tokens
    and to the nucleus of probability top_p: logprobs (B, V) -> (B,)."""
    logits = filter_top_k_top_p(logprobs / temperature, top_k, top_p)               # (B, V)
    probs = logits.softmax(dim=-1)                                                  # (B, V)
    if generator is not None and generator.device != probs.device:
        # A CPU generator (a seed that gives the same draws on every device).
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# ============================================================================ greedy / sampling
def iterate_tokens(decoder: Decoder, prefix: torch.Tensor, settings: GenerationSettings,
                   generator: torch.Generator | None = None,
                   stop: StopStrings | None = None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Greedy decoding or sampling after ``prefix`` (B, P), one step at a time.

    Yields, per step, ``(tokens, logprobs, finished)``: the (B,) token chosen per row (pad for
    a row already finished), its (B,) log-prob (0 for a finished row), and the (B,) rows
    finished after this step (eos, or a stop string). Ends when every row is finished or
    after ``max_new_tokens`` steps."""
    rows, start = prefix.size(0), prefix.size(1)
    tokens = prefix
    finished = torch.zeros(rows, dtype=torch.bool, device=prefix.device)
    cache = KVCache(decoder.num_layers) if settings.use_cache else None
    for step in range(settings.max_new_tokens):
        logprobs = step_logprobs(decoder, tokens, cache, step, settings)           # (B, V)
        if settings.do_sample:
            choice = sample_next_tokens(logprobs, settings.temperature, settings.top_k,
                                        settings.top_p, generator)                 # (B,)
        else:
            choice = logprobs.argmax(dim=-1)                                        # (B,)
        chosen = logprobs.gather(1, choice[:, None]).squeeze(1).masked_fill(finished, 0.0)
        choice = choice.masked_fill(finished, decoder.pad_token_id)
        tokens = torch.cat([tokens, choice[:, None]], dim=1)                        # (B, L+1)
        newly = ~finished & (choice == decoder.eos_token_id)
        if stop is not None:
            for row in (~finished & ~newly).nonzero().flatten().tolist():
                if stop.hit(tokens[row, start:].tolist()):
                    newly[row] = True
        finished = finished | newly
        yield choice, chosen, finished
        if bool(finished.all()):
            return


def greedy_or_sample(decoder: Decoder, prefix: torch.Tensor, settings: GenerationSettings,
                     generator: torch.Generator | None = None,
                     stop: StopStrings | None = None) -> GenerationOutput:
    """All of :func:`iterate_tokens`' steps, as a :class:`GenerationOutput`."""
    rows = prefix.size(0)
    chosen: list[torch.Tensor] = []
    scores = torch.zeros(rows, device=prefix.device)
    lengths = torch.zeros(rows, dtype=torch.long, device=prefix.device)
    done = torch.zeros(rows, dtype=torch.bool, device=prefix.device)
    for tokens, logprobs, finished in iterate_tokens(decoder, prefix, settings, generator, stop):
        chosen.append(tokens)
        scores += logprobs
        lengths += (~done).long()
        done = finished
    sequences = torch.stack(chosen, dim=1)                                          # (B, L)
    normalized = scores / length_penalty(lengths.float(), settings.length_penalty)
    return GenerationOutput(sequences, scores, normalized, lengths)


def stream_tokens(decoder: Decoder, prefix: torch.Tensor, settings: GenerationSettings,
                  generator: torch.Generator | None = None,
                  stop: StopStrings | None = None) -> Iterator[int]:
    """The token ids generated after one prefix (1, P), each yielded as soon as it is chosen
    (eos included when produced; nothing after it). Greedy or sampling."""
    if prefix.size(0) != 1:
        raise ValueError(f"streaming generates for one prefix at a time, got {prefix.size(0)}")
    if settings.num_beams != 1:
        raise ValueError("streaming needs greedy decoding or sampling (num_beams=1): a beam's "
                         "tokens are not final until the search ends")
    for tokens, _, _ in iterate_tokens(decoder, prefix, settings, generator, stop):
        yield int(tokens[0])


# ============================================================================ beam search
@dataclass
class _Beams:
    """Beam search's bookkeeping for B inputs of K beams each."""

    batch: int
    beams: int
    alpha: float
    hypotheses: list      # per input: [(normalized, score, sequence)], best first, <= K
    done: list

    def add(self, b: int, score: float, sequence: torch.Tensor) -> None:
        normalized = score / length_penalty(float(sequence.numel()), self.alpha)
        self.hypotheses[b].append((normalized, score, sequence))
        self.hypotheses[b].sort(key=lambda h: h[0], reverse=True)
        del self.hypotheses[b][self.beams:]


def beam_search(decoder: Decoder, prefix: torch.Tensor, settings: GenerationSettings
                ) -> GenerationOutput:
    """Beam search after ``prefix`` (B*K, P): the K rows of input b are b*K ... b*K+K-1 (equal
    prefixes; the step function sees them as separate rows). Returns the
    ``num_return_sequences`` best hypotheses per input, best first."""
    beams, device = settings.num_beams, prefix.device
    batch, start = prefix.size(0) // beams, prefix.size(1)
    tokens = prefix
    # Only the first beam of each input is live at the start: the others would duplicate it.
    beam_scores = torch.full((batch, beams), -math.inf, device=device)              # (B, K)
    beam_scores[:, 0] = 0.0
    cache = KVCache(decoder.num_layers) if settings.use_cache else None
    state = _Beams(batch, beams, settings.length_penalty, [[] for _ in range(batch)],
                   [False] * batch)
    next_scores = beam_scores.cpu()
    for step in range(settings.max_new_tokens):
        logprobs = step_logprobs(decoder, tokens, cache, step, settings)           # (B*K, V)
        next_scores, next_tokens, next_rows = _beam_step(decoder, state, beam_scores, logprobs,
                                                         tokens, start, step + 1, settings)
        next_rows = next_rows.view(-1).to(device)                                   # (B*K,)
        tokens = torch.cat([tokens.index_select(0, next_rows),
                            next_tokens.view(-1, 1).to(device)], dim=1)             # (B*K, L+1)
        if cache is not None:
            cache.reorder(next_rows)
        beam_scores = next_scores.to(device)
        if all(state.done):
            break
    # Inputs still searching at max_new_tokens: their live beams end there without eos.
    for b in range(batch):
        if not state.done[b]:
            for k in range(beams):
                score = float(next_scores[b, k])
                if score > -math.inf:
                    state.add(b, score, tokens[b * beams + k, start:].cpu())
    return _collect(state.hypotheses, settings.num_return_sequences, decoder.pad_token_id, device)


def _beam_step(decoder: Decoder, state: _Beams, beam_scores: torch.Tensor,
               logprobs: torch.Tensor, tokens: torch.Tensor, start: int, generated: int,
               settings: GenerationSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of beam search: the K best continuations per input, as (B, K) scores, tokens
    and source rows (built on the CPU, element by element); ended hypotheses go to ``state``."""
    batch, beams = state.batch, state.beams
    vocab = logprobs.size(-1)
    candidates = (beam_scores.view(-1, 1) + logprobs).view(batch, beams * vocab)    # (B, K*V)
    # 2K candidates: even if K of them end with eos, K live beams remain.
    top_scores, top_index = candidates.topk(min(2 * beams, beams * vocab), dim=1)   # (B, 2K)
    top_scores, top_index = top_scores.tolist(), top_index.tolist()
    next_scores = torch.full((batch, beams), -math.inf)                             # (B, K)
    next_tokens = torch.full((batch, beams), decoder.pad_token_id, dtype=torch.long)
    next_rows = torch.arange(batch * beams).view(batch, beams)                      # (B, K)
    for b in range(batch):
        if state.done[b]:
            continue  # keeps feeding pad to its rows; their scores stay -inf
        kept = 0
        for rank, (score, index) in enumerate(zip(top_scores[b], top_index[b])):
            if score == -math.inf:
                break
            beam, token = divmod(index, vocab)
            row = b * beams + beam
            if token == decoder.eos_token_id:
                # As in transformers: an eos ranked below the top K does not end a
                # hypothesis (this makes beam search with K = 1 exactly greedy).
                if rank < beams:
                    state.add(b, score, torch.cat([tokens[row, start:].cpu(),
                                                   torch.tensor([token])]))
                continue
            next_scores[b, kept], next_tokens[b, kept], next_rows[b, kept] = score, token, row
            kept += 1
            if kept == beams:
                break
        state.done[b] = beam_done(state.hypotheses[b], beams, float(next_scores[b, 0]),
                                  generated, settings.max_new_tokens, state.alpha,
                                  settings.early_stopping)
    return next_scores, next_tokens, next_rows


def beam_done(kept: list, beams: int, best_live: float, generated: int, max_length: int,
              alpha: float, early_stopping: bool) -> bool:
    """Can the search for one input stop? ``kept`` holds its best finished hypotheses, best
    first; ``best_live`` is the summed log-prob of its best live beam, ``generated`` tokens
    long."""
    if len(kept) < beams:
        return best_live == -math.inf  # no live beam left (all candidates ended)
    # A live beam's summed log-prob only falls as it grows (log-probs <= 0), so the best
    # normalised score it can still reach is that sum over the largest penalty it can get:
    # at its current length for alpha <= 0 (exact), at max_length for alpha > 0 (exact:
    # early_stopping=False) -- or, with early_stopping, at its current length (the usual
    # heuristic: the penalty's growth from here on is ignored).
    length = max_length if alpha > 0 and not early_stopping else generated
    return best_live / length_penalty(float(length), alpha) <= kept[-1][0]


def _collect(hypotheses: list, n_best: int, pad_token_id: int,
             device: torch.device) -> GenerationOutput:
    rows = [h for per_input in hypotheses for h in per_input[:n_best]]
    if any(len(per_input) < n_best for per_input in hypotheses):
        raise RuntimeError("beam search ended with fewer hypotheses than num_return_sequences")
    width = max(1, max(h[2].numel() for h in rows))
    sequences = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    for i, (_, _, sequence) in enumerate(rows):
        sequences[i, :sequence.numel()] = sequence
    return GenerationOutput(
        sequences.to(device),
        torch.tensor([h[1] for h in rows], device=device),
        torch.tensor([h[0] for h in rows], device=device),
        torch.tensor([h[2].numel() for h in rows], dtype=torch.long, device=device))


def rows_per_input(settings: GenerationSettings) -> int:
    """How many rows decoding runs per input: K beams, or R sequences (samples)."""
    return settings.num_beams if settings.num_beams > 1 else settings.num_return_sequences


def run_decoding(decoder: Decoder, prefix: torch.Tensor, settings: GenerationSettings,
                 generator: torch.Generator | None = None,
                 stop: StopStrings | None = None) -> GenerationOutput:
    """Decode after ``prefix`` (B * rows_per_input(settings), P): the rows of input b are
    consecutive (the caller repeats its inputs, and whatever its step function attends to, with
    ``repeat_interleave``). The settings pick beam search or greedy decoding / sampling."""
    if settings.num_beams > 1:
        if stop is not None:
            raise ValueError("stop strings work with greedy decoding and sampling, not beam "
                             "search")
        return beam_search(decoder, prefix, settings)
    return greedy_or_sample(decoder, prefix, settings, generator, stop)
