"""The paper's input transformations (GPT-1 §3.3) over lists of token ids.

Every fine-tuning input is one or more token sequences framed by three special tokens appended
to the vocabulary: `start` (<s>), `delimiter` ($) and `classify` (<e>). The task head reads the
final hidden state at the classify token.

    classification   <s> text <e>
    entailment       <s> premise $ hypothesis <e>
    similarity       <s> A $ B <e>  and  <s> B $ A <e>      (two sequences, both orders)
    multiple choice  <s> context $ answer_k <e>             (one sequence per answer)

Truncation cuts the text parts only; the special tokens always survive, so every sequence fits
in `n_ctx` and ends with the classify token. The policy:

- A single text keeps its beginning.
- A pair keeps the beginning of each part. If both do not fit, the longer part is cut first,
  token by token, until they fit; when both are long, A keeps ceil(budget/2) and B
  floor(budget/2) tokens (the outcome of BERT-style "trim the longer one" pair truncation).
- Multiple choice keeps the END of the context (in RACE the question sits there, next to the
  answer) and the beginning of each answer. The context is cut once, to fit the longest answer,
  so all k sequences share the same context and differ only in their answer.
- `max_part_len` (multiple choice only) first cuts every part to its first `max_part_len`
  tokens, as the original Story Cloze code does with `n_ctx // 2 - 2`
  (see `original_story_cloze_part_len`); the policy above then applies to what is left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gpt1_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids of the three fine-tuning tokens: start <s>, delimiter $, classify <e>."""

    start: int
    delimiter: int
    classify: int

    @classmethod
    def appended_to(cls, vocab_size: int) -> SpecialIds:
        """The original's layout: the three ids follow the BPE vocabulary (40478..40480)."""
        return cls(start=vocab_size, delimiter=vocab_size + 1, classify=vocab_size + 2)


def original_story_cloze_part_len(n_ctx: int) -> int:
    """Per-part cap of the original Story Cloze code: `n_ctx // 2 - 2` tokens.

    Two capped parts plus three special tokens always fit in `n_ctx`.
    """
    return n_ctx // 2 - 2


def _text_budget(n_ctx: int, n_specials: int) -> int:
    """Tokens left for text once the special tokens are placed; at least one must remain."""
    budget = n_ctx - n_specials
    if budget < 1:
        raise DataError(
            f"n_ctx={n_ctx} leaves no room for text next to {n_specials} special tokens"
        )
    return budget


def _pair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """How many tokens of A and of B to keep so that together they fit in `budget`.

    Equivalent to removing one token at a time from the longer part (B on ties) until the
    pair fits: a short part is kept whole, two long parts split the budget, A getting the odd
    token.
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    half_a, half_b = (budget + 1) // 2, budget // 2
    if len_a <= half_a:
        return len_a, budget - len_a
    if len_b <= half_b:
        return budget - len_b, len_b
    return half_a, half_b


def _frame(first: Sequence[int], second: Sequence[int] | None, specials: SpecialIds) -> list[int]:
    """`<s> first <e>`, or `<s> first $ second <e>` when there is a second part."""
    tokens = [specials.start, *first]
    if second is not None:
        tokens += [specials.delimiter, *second]
    tokens.append(specials.classify)
    return tokens


def classification(text: Sequence[int], specials: SpecialIds, n_ctx: int) -> list[int]:
    """`<s> text <e>`; the text keeps its first `n_ctx - 2` tokens."""
    budget = _text_budget(n_ctx, 2)
    return _frame(text[:budget], None, specials)


def _pair(
    a: Sequence[int], b: Sequence[int], n_ctx: int
) -> tuple[Sequence[int], Sequence[int]]:
    """A and B cut (from their ends) to fit next to start, delimiter and classify."""
    keep_a, keep_b = _pair_lengths(len(a), len(b), _text_budget(n_ctx, 3))
    return a[:keep_a], b[:keep_b]


def entailment(
    premise: Sequence[int], hypothesis: Sequence[int], specials: SpecialIds, n_ctx: int
) -> list[int]:
    """`<s> premise $ hypothesis <e>`, the pair cut as described in the module docstring."""
    premise, hypothesis = _pair(premise, hypothesis, n_ctx)
    return _frame(premise, hypothesis, specials)


def similarity(
    a: Sequence[int], b: Sequence[int], specials: SpecialIds, n_ctx: int
) -> tuple[list[int], list[int]]:
    """Both orders, `<s> A $ B <e>` and `<s> B $ A <e>`.

    The similarity relation has no natural order, so the model sees both and adds the two
    final hidden states. Both sequences hold the same cut parts.
    """
    a, b = _pair(a, b, n_ctx)
    return _frame(a, b, specials), _frame(b, a, specials)


def multiple_choice(
    context: Sequence[int],
    answers: Sequence[Sequence[int]],
    specials: SpecialIds,
    n_ctx: int,
    max_part_len: int | None = None,
) -> list[list[int]]:
    """One sequence `<s> context $ answer_k <e>` per answer, all sharing the same context.

    The context may already end with the question. Truncation keeps the end of the context
    and the beginning of each answer; `max_part_len` first caps every part from the front
    like the original Story Cloze code (see the module docstring).
    """
    if not answers:
        raise DataError("multiple_choice needs at least one answer")
    if max_part_len is not None:
        context = context[:max_part_len]
        answers = [answer[:max_part_len] for answer in answers]
    longest_answer = max(len(answer) for answer in answers)
    keep_context, keep_answer = _pair_lengths(
        len(context), longest_answer, _text_budget(n_ctx, 3)
    )
    # Slicing from len - keep (not -keep) so that keep == 0 gives an empty context.
    context = context[len(context) - keep_context:]
    return [_frame(context, answer[:keep_answer], specials) for answer in answers]


def pack(
    sequences: Sequence[Sequence[int]], specials: SpecialIds, n_ctx: int, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad sequences into a batch for the model.

    Returns:
      tokens_NxL: int32 [N, n_ctx], each sequence left-aligned and followed by `pad_id`.
      mask_NxL: float32 [N, n_ctx], 1 on real tokens and 0 on padding: the auxiliary LM
        loss is taken only where the mask is 1 (the caller shifts it for next-token targets).
      classify_pos_N: int32 [N], position of the FIRST classify token of each sequence, where
        the original pools the hidden state for the task head.

    Raises ValueError if a sequence is longer than `n_ctx` or has no classify token.
    """
    tokens_NxL = np.full((len(sequences), n_ctx), pad_id, dtype=np.int32)
    mask_NxL = np.zeros((len(sequences), n_ctx), dtype=np.float32)
    classify_pos_N = np.zeros((len(sequences),), dtype=np.int32)
    for row, sequence in enumerate(sequences):
        if len(sequence) > n_ctx:
            raise DataError(f"sequence {row} has {len(sequence)} tokens, more than n_ctx={n_ctx}")
        try:
            classify_pos_N[row] = list(sequence).index(specials.classify)
        except ValueError:
            raise DataError(
                f"sequence {row} has no classify token (id {specials.classify})"
            ) from None
        tokens_NxL[row, : len(sequence)] = sequence
        mask_NxL[row, : len(sequence)] = 1.0
    return tokens_NxL, mask_NxL, classify_pos_N
