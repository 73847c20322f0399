"""Token sampling for the embedded engine: llama.cpp's sampler chain, with grammars checked lazily.

A grammar sampler in a llama.cpp chain checks every token of the vocabulary (49k for SmolLM2) at
every step, which costs a small model more than its decode. `TokenSampler` does what llama.cpp's
own common sampler does: it samples without the grammar, checks only the sampled token, and only
when the grammar rejects it filters all the candidates and samples again. A token is drawn with
the same probability either way: p(t) / (mass the grammar allows), taken directly or after a
rejection. Greedy decoding picks the same token. (Top-p and top-k cut before the grammar
filters rather than after, as in llama.cpp.)

Repetition penalties (`RepetitionPenalty`) apply to free text only: JSON repeats itself by
design, and a tool's input often copies the prompt word for word.
"""

from __future__ import annotations

import ctypes
import weakref

import llama_cpp
import numpy as np

from tercet.engine.base import RepetitionPenalty, SamplingParams

ROOT_RULE = b"root"


class GrammarError(ValueError):
    """llama.cpp could not parse a GBNF grammar."""


class TokenSampler:
    """Samples the tokens of one reply from a context's logits.

    The free chain (penalties, then the request's truncation, temperature and draw) sees every
    token of the reply, sampled or written by the engine, so that its penalties know the reply
    so far; grammar-constrained phases sample from the same chain without the penalties.
    """

    def __init__(
        self,
        llama: llama_cpp.Llama,
        params: SamplingParams,
        repetition: RepetitionPenalty | None,
        seed: int,
    ) -> None:
        self._ctx = llama.ctx
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._n_vocab = llama.n_vocab()
        self._free = self._chain(params, repetition, seed)
        penalised = repetition is not None and repetition.active
        self._constrained = self._chain(params, None, seed) if penalised else self._free
        self._grammar: llama_cpp.llama_sampler_p | None = None
        # The candidates of a step whose sampled token the grammar rejected.
        self._candidates = (llama_cpp.llama_token_data * self._n_vocab)()
        self._candidate_view = np.ctypeslib.as_array(self._candidates)
        self._token_ids = np.arange(self._n_vocab, dtype=np.int32)
        self.rejections = 0  # sampled tokens the grammar turned down (full filtering followed)
        # What llama.cpp must free: the chains, and the grammar in use (replaced by `constrain`).
        self._owned = [self._free, *([self._constrained] if penalised else [])]
        self._grammar_slot: list[llama_cpp.llama_sampler_p | None] = [None]
        self._finalizer = weakref.finalize(self, _free_all, self._owned, self._grammar_slot)

    def constrain(self, gbnf: str | None) -> None:
        """From now on, sample under the grammar `gbnf` (from its start), or freely with None."""
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = self._grammar_slot[0] = None
        if gbnf is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(
                self._vocab, gbnf.encode("utf-8"), ROOT_RULE
            )
            if not grammar:
                raise GrammarError(f"llama.cpp rejected the grammar:\n{gbnf}")
            self._grammar = self._grammar_slot[0] = grammar

    def sample(self) -> int:
        """The next token, from the logits of the context's last evaluated token. The free
        chain's history has seen it; the grammar, if any, has not (see `advance`)."""
        if self._grammar is None:
            return int(llama_cpp.llama_sampler_sample(self._free, self._ctx, -1))
        token = int(llama_cpp.llama_sampler_sample(self._constrained, self._ctx, -1))
        if not self._allows(self._grammar, token):
            self.rejections += 1
            token = self._sample_all(self._grammar)
        if self._constrained is not self._free:
            llama_cpp.llama_sampler_accept(self._free, token)
        return token

    def advance(self, token: int) -> None:
        """`token` (sampled) is part of the reply: the grammar moves past it."""
        if self._grammar is not None:
            llama_cpp.llama_sampler_accept(self._grammar, token)

    def write(self, tokens: list[int]) -> None:
        """Tokens the engine wrote into the reply itself: the penalties' history records them."""
        for token in tokens:
            llama_cpp.llama_sampler_accept(self._free, token)

    def _allows(self, grammar: llama_cpp.llama_sampler_p, token: int) -> bool:
        one = llama_cpp.llama_token_data(token, 0.0, 0.0)
        candidates = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(one), size=1, selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(candidates))
        return bool(np.isfinite(one.logit))  # a rejected token's logit is set to -inf

    def _sample_all(self, grammar: llama_cpp.llama_sampler_p) -> int:
        """Filter every candidate through the grammar, then sample from what is left."""
        logits = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        view = self._candidate_view
        view["id"] = self._token_ids  # the chain may have reordered them last time
        view["logit"] = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        view["p"] = 0.0
        candidates = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self._candidates, llama_cpp.llama_token_data_p),
            size=self._n_vocab,
            selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(candidates))
        llama_cpp.llama_sampler_apply(self._constrained, ctypes.byref(candidates))
        return int(candidates.data[candidates.selected].id)

    def _chain(
        self, params: SamplingParams, repetition: RepetitionPenalty | None, seed: int
    ) -> llama_cpp.llama_sampler_p:
        """The sampler chain of llama-cpp-python's `Llama.generate`, less its no-op stages."""
        chain: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        stages = []
        if repetition is not None and repetition.active:
            if repetition.repeat != 1.0 or repetition.frequency or repetition.presence:
                stages.append(
                    llama_cpp.llama_sampler_init_penalties(
                        self._n_vocab,
                        repetition.repeat_last_n,
                        repetition.repeat,
                        repetition.frequency,
                        repetition.presence,
                    )
                )
            if repetition.dry_multiplier > 0:
                breakers = [b.encode("utf-8") for b in repetition.dry_sequence_breakers]
                array = (ctypes.c_char_p * len(breakers))(*breakers)
                stages.append(
                    llama_cpp.llama_sampler_init_dry(
                        self._vocab,
                        repetition.dry_multiplier,
                        repetition.dry_base,
                        repetition.dry_allowed_length,
                        repetition.dry_last_n,
                        array,
                        len(breakers),
                    )
                )
        if params.temperature <= 0:
            stages.append(llama_cpp.llama_sampler_init_greedy())
        else:
            stages.append(llama_cpp.llama_sampler_init_top_k(params.top_k or 0))
            top_p = 1.0 if params.top_p is None else params.top_p
            stages.append(llama_cpp.llama_sampler_init_top_p(top_p, 1))
            stages.append(llama_cpp.llama_sampler_init_temp(params.temperature))
            stages.append(llama_cpp.llama_sampler_init_dist(seed))
        for stage in stages:
            llama_cpp.llama_sampler_chain_add(chain, stage)  # the chain owns it now
        return chain

    def close(self) -> None:
        """Free llama.cpp's samplers now rather than when collected."""
        self._finalizer()


def _free_all(
    chains: list[llama_cpp.llama_sampler_p], grammar: list[llama_cpp.llama_sampler_p | None]
) -> None:
    for sampler in [*chains, *grammar]:
        if sampler is not None:
            llama_cpp.llama_sampler_free(sampler)
