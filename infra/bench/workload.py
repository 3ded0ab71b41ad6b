"""What the benchmark sends: request lengths, synthetic prompts of those lengths, Poisson arrival gaps.

Lengths come from the planner's own distributions (``infra.plan.lengths``): a deployment's traffic spec, or
``--input-tokens MEAN[,P95]`` read as a fixed length (MEAN) or the log-normal the spec would fit (MEAN,P95).
They are drawn with :meth:`infra.plan.capacity.Traffic.draw`, block by block, so with seed 0 the first
``MAX_REQUESTS`` requests have exactly the lengths the planner's capacity search simulated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from infra.plan.capacity import MAX_REQUESTS, Traffic
from infra.plan.lengths import TokenLengths
from infra.spec.tokens import FixedLengths, LogNormalLengths

# Without a deployment's max_model_len there is no cap but the spec's own bound on lengths.
UNCAPPED_MODEL_LEN = 2_000_001

# Synthetic prompt text. Each entry, with its leading space, is ONE token in the BPE vocabularies of the
# models we serve (Llama 3, Qwen 2.5, Mistral, GPT-4's cl100k): very common English words. So a prompt of
# n words is ≈ n tokens (≈ 4.5 characters per token for this text; ≈ 4 is the usual rule for prose).
# The chat template adds its own tokens (typically 10-30); the server's usage.prompt_tokens is what gets
# recorded, never this estimate.
_TEXT = (
    "the of and to in is that for it with as was on be by at this from or have an are not but what all "
    "were when we there can more if no out so said up its about into than them only other new some time "
    "could these two may then first any like now such our over man me even most made after also did many "
    "before must through back years where much your way well down should because each just those people how "
    "too little state good very make world still own see men work long get here between both life being under "
    "never day same another know while last might us great old year off come since against go came right used "
    "take three"
)
WORDS = tuple(_TEXT.split())


def parse_lengths(text: str, flag: str) -> TokenLengths:
    """``MEAN`` (a fixed length) or ``MEAN,P95`` (the log-normal the planner fits to them); ValueError if bad."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{flag}: '{text}' is not MEAN or MEAN,P95 (whole numbers of tokens)") from None
    if len(values) not in (1, 2) or any(v < 1 for v in values):
        raise ValueError(f"{flag}: '{text}' is not MEAN or MEAN,P95 (whole numbers >= 1)")
    if len(values) == 1:
        return FixedLengths(distribution="fixed", value=values[0])
    mean, p95 = values
    if p95 < mean:
        raise ValueError(f"{flag}: P95 ({p95}) is below MEAN ({mean})")
    return LogNormalLengths(mean=mean, p95=p95)


@dataclass
class LengthSource:
    """Per-request (input, output) token lengths, drawn lazily ``MAX_REQUESTS`` at a time."""

    inputs: TokenLengths
    outputs: TokenLengths
    max_model_len: int = UNCAPPED_MODEL_LEN
    seed: int = 0
    _drawn: list[tuple[int, int]] = field(default_factory=list, init=False)

    def __call__(self, index: int) -> tuple[int, int]:
        while index >= len(self._drawn):
            # Block k uses seed + k: block 0 is the planner's own sample (Traffic.draw with seed 0).
            seed = self.seed + len(self._drawn) // MAX_REQUESTS
            block = Traffic.draw(self.inputs, self.outputs, self.max_model_len, seed)
            self._drawn.extend(zip(block.input_lens, block.output_lens, strict=True))
        return self._drawn[index]


def synthetic_prompt(tokens: int, rng: random.Random, index: int) -> str:
    """About ``tokens`` tokens of word salad, different for every request.

    Why random words rather than one repeated word: vLLM's prefix caching would serve a repeated prompt's
    prefill from cache and make TTFT look better than the planner (which models no prefix caching) assumes.
    The request index goes first so even two equal draws never share a prefix block.
    """
    head = f"{index}:"
    return head + "".join(" " + rng.choice(WORDS) for _ in range(max(0, tokens - 1)))


def poisson_gaps(rate: float, rng: random.Random) -> float:
    """One inter-arrival gap of a Poisson process at ``rate`` req/s (as ``infra.plan.simulate.poisson``)."""
    return rng.expovariate(1.0) / rate
