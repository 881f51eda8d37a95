"""Exact layouts of the four input transformations, their truncation, and packing."""

import numpy as np
import pytest

from gpt1_jax.data import transforms
from gpt1_jax.data.transforms import SpecialIds

# Ids far from the text ids below so that a misplaced special token is easy to spot.
S = SpecialIds(start=100, delimiter=101, classify=102)
START, DELIM, CLF = 100, 101, 102


def test_appended_to_matches_the_original_ids():
    assert transforms.SpecialIds.appended_to(40478) == SpecialIds(40478, 40479, 40480)


def test_classification_layout():
    assert transforms.classification([1, 2, 3], S, n_ctx=8) == [START, 1, 2, 3, CLF]


def test_classification_keeps_the_beginning_of_a_long_text():
    sequence = transforms.classification(list(range(1, 11)), S, n_ctx=6)
    assert sequence == [START, 1, 2, 3, 4, CLF]


def test_entailment_layout():
    sequence = transforms.entailment([1, 2], [3, 4, 5], S, n_ctx=16)
    assert sequence == [START, 1, 2, DELIM, 3, 4, 5, CLF]
    assert sequence.index(DELIM) == 3


def test_entailment_cuts_the_longer_part_first():
    # Budget 9 - 3 = 6 text tokens: the 2-token premise stays whole, the hypothesis keeps 4.
    sequence = transforms.entailment([1, 2], [11, 12, 13, 14, 15, 16, 17], S, n_ctx=9)
    assert sequence == [START, 1, 2, DELIM, 11, 12, 13, 14, CLF]
    # The other way round: the long premise is the one cut.
    sequence = transforms.entailment([1, 2, 3, 4, 5, 6, 7], [11, 12], S, n_ctx=9)
    assert sequence == [START, 1, 2, 3, 4, DELIM, 11, 12, CLF]


def test_entailment_two_long_parts_share_the_budget_first_part_gets_the_odd_token():
    # Budget 8 - 3 = 5: premise keeps 3, hypothesis 2.
    sequence = transforms.entailment(list(range(1, 11)), list(range(11, 21)), S, n_ctx=8)
    assert sequence == [START, 1, 2, 3, DELIM, 11, 12, CLF]
    assert len(sequence) == 8


def test_pair_truncation_equals_trimming_the_longer_part_one_token_at_a_time():
    def trim_loop(len_a, len_b, budget):
        while len_a + len_b > budget:
            if len_a > len_b:
                len_a -= 1
            else:
                len_b -= 1
        return len_a, len_b

    for len_a in range(0, 12):
        for len_b in range(0, 12):
            for budget in range(1, 14):
                assert transforms._pair_lengths(len_a, len_b, budget) == trim_loop(
                    len_a, len_b, budget
                ), (len_a, len_b, budget)


def test_similarity_gives_both_orders():
    ab, ba = transforms.similarity([1, 2], [3], S, n_ctx=16)
    assert ab == [START, 1, 2, DELIM, 3, CLF]
    assert ba == [START, 3, DELIM, 1, 2, CLF]


def test_similarity_truncates_once_and_uses_the_same_parts_in_both_orders():
    ab, ba = transforms.similarity(list(range(1, 11)), [21, 22, 23, 24, 25, 26], S, n_ctx=9)
    # Budget 6: A keeps 3, B keeps 3.
    assert ab == [START, 1, 2, 3, DELIM, 21, 22, 23, CLF]
    assert ba == [START, 21, 22, 23, DELIM, 1, 2, 3, CLF]


def test_multiple_choice_one_sequence_per_answer():
    sequences = transforms.multiple_choice([1, 2, 3], [[11], [12, 13], [14]], S, n_ctx=16)
    assert sequences == [
        [START, 1, 2, 3, DELIM, 11, CLF],
        [START, 1, 2, 3, DELIM, 12, 13, CLF],
        [START, 1, 2, 3, DELIM, 14, CLF],
    ]


def test_multiple_choice_keeps_the_end_of_the_context_the_same_for_every_answer():
    # Budget 10 - 3 = 7; the longest answer has 2 tokens, so the context keeps its last 5.
    context = list(range(1, 21))
    sequences = transforms.multiple_choice(context, [[31], [32, 33]], S, n_ctx=10)
    assert sequences == [
        [START, 16, 17, 18, 19, 20, DELIM, 31, CLF],
        [START, 16, 17, 18, 19, 20, DELIM, 32, 33, CLF],
    ]
    assert all(len(sequence) <= 10 for sequence in sequences)


def test_multiple_choice_with_max_part_len_reproduces_the_original_story_cloze_cut():
    n_ctx = 12
    max_len = transforms.original_story_cloze_part_len(n_ctx)
    assert max_len == 4
    context, ending_1, ending_2 = list(range(1, 11)), [21, 22, 23, 24, 25], [31, 32]
    sequences = transforms.multiple_choice(context, [ending_1, ending_2], S, n_ctx, max_len)
    # The original: [start] + x1[:max_len] + [delimiter] + x2[:max_len] + [clf_token].
    assert sequences == [
        [START, *context[:max_len], DELIM, *ending_1[:max_len], CLF],
        [START, *context[:max_len], DELIM, *ending_2[:max_len], CLF],
    ]


def test_every_transform_fits_n_ctx_and_keeps_its_special_tokens():
    long_a, long_b = list(range(1, 60)), list(range(60, 99))
    n_ctx = 17
    sequences = [
        transforms.classification(long_a, S, n_ctx),
        transforms.entailment(long_a, long_b, S, n_ctx),
        *transforms.similarity(long_a, long_b, S, n_ctx),
        *transforms.multiple_choice(long_a, [long_b, long_a[:3]], S, n_ctx),
    ]
    # All but the short second answer fill the context exactly: nothing is cut needlessly.
    # That one is <s> + 7 context tokens + $ + its 3 tokens + <e> = 13.
    assert [len(sequence) for sequence in sequences] == [n_ctx] * 5 + [13]
    for sequence in sequences:
        assert sequence[0] == START and sequence[-1] == CLF
        assert sequence.count(CLF) == 1 and sequence.count(START) == 1
    assert all(sequence.count(DELIM) == 1 for sequence in sequences[1:])


def test_n_ctx_too_small_for_the_special_tokens_is_an_error():
    with pytest.raises(ValueError, match="no room"):
        transforms.entailment([1], [2], S, n_ctx=3)


def test_pack_pads_masks_and_finds_the_classify_token():
    sequences = [[START, 1, 2, CLF], [START, 3, DELIM, 4, 5, CLF]]
    tokens, mask, classify_pos = transforms.pack(sequences, S, n_ctx=8, pad_id=0)
    assert tokens.dtype == np.int32 and mask.dtype == np.float32 and classify_pos.dtype == np.int32
    np.testing.assert_array_equal(
        tokens,
        [[START, 1, 2, CLF, 0, 0, 0, 0], [START, 3, DELIM, 4, 5, CLF, 0, 0]],
    )
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(classify_pos, [3, 5])


def test_pack_pools_at_the_first_classify_token():
    _, _, classify_pos = transforms.pack([[START, CLF, 7, CLF]], S, n_ctx=4)
    assert classify_pos.tolist() == [1]


def test_pack_uses_the_given_pad_id_and_accepts_no_sequences():
    tokens, _, _ = transforms.pack([[START, CLF]], S, n_ctx=4, pad_id=-1)
    assert tokens.tolist() == [[START, CLF, -1, -1]]
    tokens, mask, classify_pos = transforms.pack([], S, n_ctx=4)
    assert tokens.shape == (0, 4) and mask.shape == (0, 4) and classify_pos.shape == (0,)


def test_pack_rejects_a_sequence_longer_than_n_ctx_or_without_classify():
    with pytest.raises(ValueError, match="sequence 1 has 5 tokens"):
        transforms.pack([[START, CLF], [START, 1, 2, 3, CLF]], S, n_ctx=4)
    with pytest.raises(ValueError, match="no classify token"):
        transforms.pack([[START, 1]], S, n_ctx=4)
