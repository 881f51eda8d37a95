"""Task specs and readers: real GLUE and Story Cloze files where we have them, small files in the
released layouts for the rest, and real TFDS builders prepared from those files."""

import importlib.resources.abc
import json
import re
import shutil
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from gpt1_jax import metrics
from gpt1_jax.data import tasks
from gpt1_jax.data.tasks import Example
from gpt1_jax.errors import DataError


@pytest.fixture(scope="session")
def glue_dir(shared_data) -> Path:
    """The real GLUE files (conftest's shared_data: a failure, not a skip, when missing)."""
    return shared_data / "glue"


@pytest.fixture(scope="session")
def story_cloze_dir(shared_data) -> Path:
    return shared_data / "story_cloze"


def _copy_story_cloze_as_tfds_names(story_cloze_dir: Path, folder: Path) -> None:
    """The shared CSVs under the names TFDS's manual download asks for."""
    for which in ("val", "test"):
        shutil.copy(story_cloze_dir / tasks._STORY_CLOZE_FILES[which],
                    folder / f"cloze_test_{which}__spring2016.csv")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _tsv(*rows) -> str:
    return "".join("\t".join(map(str, row)) + "\n" for row in rows)


def _raises_at(path: Path, line: int):
    """pytest.raises for a ValueError that names the file and the 1-based line."""
    return pytest.raises(ValueError, match=re.escape(f"{path}:{line}:"))


# ---------------------------------------------------------------------------------------------
# Specs.


def test_all_twelve_tasks_of_the_paper_are_known():
    assert set(tasks.TASKS) == {
        "mnli", "snli", "scitail", "qnli", "rte", "race", "race/middle", "race/high",
        "story_cloze", "mrpc", "qqp", "stsb", "cola", "sst2",
    }


def test_specs_are_consistent():
    for name, spec in tasks.TASKS.items():
        assert spec.name == name
        assert spec.kind in {"classification", "entailment", "similarity", "multiple_choice"}
        assert spec.target in {"classification", "regression", "multiple_choice"}
        assert spec.metrics == metrics.TASK_METRICS[name]
        assert set(spec.eval_splits) <= set(spec.splits)
        if spec.target == "regression":
            assert spec.num_labels == 1 and spec.label_names == ()
        else:
            assert spec.num_labels == len(spec.label_names)


def test_spec_details():
    assert tasks.get_task("stsb").kind == "similarity"
    assert tasks.get_task("stsb").target == "regression"
    assert tasks.get_task("mrpc").kind == "similarity"
    assert tasks.get_task("mrpc").metrics == ("f1", "accuracy")
    assert tasks.get_task("cola").metrics == ("mcc",)
    assert tasks.get_task("race/high").num_labels == 4
    assert tasks.get_task("story_cloze").num_labels == 2
    assert tasks.get_task("story_cloze").eval_splits == ("test",)
    assert tasks.get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert tasks.get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert tasks.get_task("race").tfds_names == ("race/middle", "race/high")


def test_get_task_unknown():
    with pytest.raises(ValueError, match=r"unknown task 'wnli'; known: mnli, snli"):
        tasks.get_task("wnli")


def test_load_examples_argument_errors(tmp_path):
    message = "has no split 'validation'; splits: train, validation_matched"
    with pytest.raises(ValueError, match=message):
        tasks.load_examples("mnli", "validation", tmp_path)
    with pytest.raises(ValueError, match="needs data_dir"):
        tasks.load_examples("sst2", "train")
    with pytest.raises(ValueError, match="unknown source 'hf'"):
        tasks.load_examples("sst2", "train", tmp_path, source="hf")


# ---------------------------------------------------------------------------------------------
# Real GLUE and Story Cloze files.


def test_sst2_real(glue_dir):
    dev = tasks.load_examples("sst2", "validation", glue_dir)
    assert len(dev) == 872
    # Texts are kept verbatim, including SST-2's space before the tab.
    assert dev[0] == Example(("it 's a charming and often affecting journey . ",), 1, "0")
    assert dev[1] == Example(("unflinchingly bleak and desperate ",), 0, "1")
    assert sum(example.label for example in dev) == 444
    assert len(tasks.load_examples("sst2", "train", glue_dir)) == 67_349


def test_cola_real_headerless(glue_dir):
    dev = tasks.load_examples("cola", "validation", glue_dir)
    assert len(dev) == 1043
    assert dev[0] == Example(("The sailors rode the breeze clear of the rocks.",), 1, "0")
    assert sum(example.label for example in dev) == 721
    train = tasks.load_examples("cola", "train", glue_dir)
    assert len(train) == 8551
    assert train[0].texts == (
        "Our friends won't buy this analysis, let alone the next one we propose.",)


def test_mrpc_real_with_bom_and_quotes(glue_dir):
    dev = tasks.load_examples("mrpc", "validation", glue_dir)
    assert len(dev) == 408
    assert dev[0].label == 1
    assert dev[0].texts == (
        "He said the foodservice pie business doesn't fit the company's long-term growth strategy.",
        '"The foodservice pie business does not fit our long-term growth strategy.',
    )
    assert sum(example.label for example in dev) == 279
    assert len(tasks.load_examples("mrpc", "train", glue_dir)) == 3668


def test_stsb_real(glue_dir):
    dev = tasks.load_examples("stsb", "validation", glue_dir)
    assert len(dev) == 1500
    assert dev[0] == Example(
        ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing."), 5.0, "0")
    assert dev[1].label == pytest.approx(4.75)
    assert all(0.0 <= example.label <= 5.0 for example in dev)
    assert len(tasks.load_examples("stsb", "train", glue_dir)) == 5749


def test_story_cloze_real_counts_and_split(story_cloze_dir):
    train = tasks.load_examples("story_cloze", "train", story_cloze_dir)
    validation = tasks.load_examples("story_cloze", "validation", story_cloze_dir)
    test = tasks.load_examples("story_cloze", "test", story_cloze_dir)
    assert (len(train), len(validation), len(test)) == (1497, 374, 1871)
    # The cut is a partition of the validation file's 1,871 stories.
    uids = [example.uid for example in train + validation]
    assert len(set(uids)) == 1871
    # Regression anchors: the first stories of each part under seed 3535999445.
    assert [example.uid for example in validation[:2]] == [
        "84b1b98f-1e3b-460b-92a7-ef7b8f87e76a", "bb63a874-2cf1-4ffc-8f75-b403c0b26be5"]
    assert [example.uid for example in train[:2]] == [
        "98181079-1081-48ba-bb83-031bb0046b92", "a8ca1926-5d63-4de0-a1e5-d0826fbe0bf0"]
    # The labelled test set: 960 stories end with quiz 1, 911 with quiz 2.
    assert sum(example.label for example in test) == 911
    first = test[0]
    assert first.uid == "b929f263-1dcd-4a0b-b267-5d5ff2fe65bb"
    assert first.texts[0].startswith("My friends all love to go to the club to dance. They think")
    assert first.texts[1:] == ("My friends decided to keep inviting me out as I am so much fun.",
                               "The next weekend, I was asked to please stay home.")
    assert first.label == 1


def test_story_cloze_split_follows_sklearn_shuffle_split():
    # scikit-learn documents ShuffleSplit(test_size=.25, random_state=0) on 6 samples as
    # TRAIN [1 3 0 4], TEST [5 2]; train_test_split returns those parts in that order.
    train, validation = tasks.story_cloze_split(list("abcdef"), n_valid=2, seed=0)
    assert train == ["b", "d", "a", "e"]
    assert validation == ["f", "c"]


def test_story_cloze_accepts_other_file_names(tmp_path, story_cloze_dir):
    _copy_story_cloze_as_tfds_names(story_cloze_dir, tmp_path)
    assert tasks.load_examples("story_cloze", "validation", tmp_path) == tasks.load_examples(
        "story_cloze", "validation", story_cloze_dir)
    assert len(tasks.load_examples("story_cloze", "test", tmp_path)) == 1871
    shutil.copy(tmp_path / "cloze_test_val__spring2016.csv",
                tmp_path / "cloze_test_val__spring2016 (1).csv")
    with pytest.raises(ValueError, match="several val files"):
        tasks.load_examples("story_cloze", "train", tmp_path)


# ---------------------------------------------------------------------------------------------
# Small files in the released layouts.

STORY_CLOZE_HEADER = ("InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
                      "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n")
MNLI_TRAIN_HEADER = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                     "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                     "sentence2", "label1", "gold_label")
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER[:10]
MNLI_PARSES = ("( x )", "( y )", "(ROOT x)", "(ROOT y)")
STSB_HEADER = ("index", "genre", "filename", "year", "old_index", "source1", "source2",
               "sentence1", "sentence2", "score")
MRPC_HEADER = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
SNLI_ROWS = {
    "train": [("A man plays.", "A person plays.", "entailment", "1r1e"),
              ("A dog runs.", "A cat sleeps.", "contradiction", "2r1c"),
              ("Two kids.", "Kids play.", "-", "3r1n")],
    "dev": [("A woman sings.", "Someone sings.", "neutral", "4r1n")],
    "test": [("People walk.", "People move.", "entailment", "5r1e")],
}
SCITAIL_ROWS = {
    "train": [("Water boils at 100 C.", "Water boils when hot.", "entails"),
              ("Plants need light.", "Rocks are hard.", "neutral")],
    "dev": [("The sun is a star.", "The sun is a star.", "entails")],
    "test": [("Ice is cold.", "Ice melts.", "neutral")],
}


def _race_file(path: Path, file_id: str, questions) -> Path:
    record = {"article": f"Article of {file_id}.", "id": file_id,
              "questions": [question for question, _, _ in questions],
              "options": [options for _, options, _ in questions],
              "answers": [answer for _, _, answer in questions]}
    return _write(path, json.dumps(record))


def _write_glue(root: Path) -> None:
    """All eight GLUE tasks in GLUE's layout, with BOM, bare quotes and trailing spaces."""
    _write(root / "SST-2/train.tsv",
           _tsv(("sentence", "label"), ("it 's fine . ", 1), ('a "bad" film ', 0)))
    _write(root / "SST-2/dev.tsv", _tsv(("sentence", "label"), ("great . ", 1)))
    _write(root / "SST-2/test.tsv", _tsv(("index", "sentence"), (0, "good ."), (1, "worse .")))
    _write(root / "CoLA/train.tsv",
           _tsv(("gj04", 1, "", "The cat sat."), ("gj04", 0, "*", "Cat the sat.")))
    _write(root / "CoLA/dev.tsv", _tsv(("gj04", 1, "", "Dogs bark.")))
    _write(root / "CoLA/test.tsv", _tsv(("index", "sentence"), (0, "Birds fly.")))
    _write(root / "MRPC/train.tsv", "\ufeff" + _tsv(
        MRPC_HEADER,
        (1, 11, 12, 'He said "yes".', "He agreed."),
        (0, 13, 14, "A rose.", "B fell.")))
    _write(root / "MRPC/dev.tsv", "\ufeff" + _tsv(MRPC_HEADER, (1, 15, 16, "Same.", "Same!")))
    _write(root / "MRPC/test.tsv",
           _tsv(("index",) + MRPC_HEADER[1:], (0, 17, 18, "C up.", "D down.")))
    sts_source = ("f", "2012", "0001", "none", "none")
    _write(root / "STS-B/train.tsv", _tsv(
        STSB_HEADER, (0, "main-news", *sts_source, "A plane.", "An airplane.", "4.800")))
    _write(root / "STS-B/dev.tsv", _tsv(
        STSB_HEADER, (0, "main-captions", *sts_source, "A cat.", "A dog.", "0.500")))
    _write(root / "STS-B/test.tsv", _tsv(
        STSB_HEADER[:-1], (0, "main-forums", *sts_source, "Yes.", "No.")))
    for split, rows in {"train": [(0, "It rains.", "It is wet.", "entailment"),
                                  (1, "It is dry.", "It rains.", "not_entailment")],
                        "dev": [(0, "Sun.", "Light.", "entailment")]}.items():
        _write(root / f"RTE/{split}.tsv", _tsv(("index", "sentence1", "sentence2", "label"), *rows))
    _write(root / "RTE/test.tsv", _tsv(("index", "sentence1", "sentence2"), (0, "A.", "B.")))
    for split, rows in {"train": [(0, "Who won?", "Bob won the race.", "entailment")],
                        "dev": [(0, "When?", "It is red.", "not_entailment"),
                                (1, "Where?", "In Paris.", "entailment")]}.items():
        _write(root / f"QNLI/{split}.tsv", _tsv(("index", "question", "sentence", "label"), *rows))
    _write(root / "QNLI/test.tsv", _tsv(("index", "question", "sentence"), (0, "Why?", "Because.")))
    mnli_rows = {  # index, promptID, pairID, genre, parses, sentences, label1, gold_label
        "train": [
            (0, 31193, "31193n", "government", *MNLI_PARSES, "He went.", "He left.",
             "neutral", "neutral"),
            (1, 101457, "101457e", "telephone", *MNLI_PARSES, "Yes.", "No.",
             "contradiction", "contradiction"),
        ],
        "dev_matched": [(0, 63735, "63735n", "fiction", *MNLI_PARSES, "It fell.", "It dropped.",
                         "entailment", "entailment")],
        "dev_mismatched": [(0, 75290, "75290c", "letters", *MNLI_PARSES, "Hi.", "Bye.",
                            "neutral", "contradiction")],
    }
    for file_name, rows in mnli_rows.items():
        _write(root / f"MNLI/{file_name}.tsv", _tsv(MNLI_TRAIN_HEADER, *rows))
    for file_name in ("test_matched", "test_mismatched"):
        _write(root / f"MNLI/{file_name}.tsv", _tsv(
            MNLI_TEST_HEADER, (0, 1, "1x", "fiction", *MNLI_PARSES, f"A {file_name}.", "B.")))
    qqp_header = ("id", "qid1", "qid2", "question1", "question2", "is_duplicate")
    _write(root / "QQP/train.tsv",
           _tsv(qqp_header, (133273, 213221, 213222, "How old?", "What age?", 1)))
    _write(root / "QQP/dev.tsv", _tsv(qqp_header, (201359, 303345, 303346, "Why?", "How?", 0)))
    _write(root / "QQP/test.tsv", _tsv(("id", "question1", "question2"), (0, "Who?", "Whom?")))


def _write_race(root: Path) -> None:
    for split in ("train", "dev", "test"):
        _race_file(root / f"RACE/{split}/middle/1.txt", f"middle1_{split}.txt", [
            ("What is it?", ["A cat", "A dog", "A cow", "A pig"], "B"),
            ("The writer thinks _ .", ["yes", "no", "maybe", "never"], "D")])
        _race_file(root / f"RACE/{split}/high/7.txt", f"high7_{split}.txt", [
            ("Why?", ["one", "two", "three", "four"], "A")])


def _write_scitail_and_snli(root: Path) -> None:
    for split, rows in SCITAIL_ROWS.items():
        _write(root / f"SciTailV1.1/tsv_format/scitail_1.0_{split}.tsv", _tsv(*rows))
    for split, rows in SNLI_ROWS.items():
        lines = [json.dumps({"sentence1": s1, "sentence2": s2, "gold_label": label,
                             "pairID": pair_id, "annotator_labels": [label]})
                 for s1, s2, label, pair_id in rows]
        _write(root / f"snli_1.0/snli_1.0_{split}.jsonl", "\n".join(lines) + "\n")
        # The same pairs in the release's .txt form, which the TFDS builder reads.
        header = ("gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1",
                  "sentence2", "captionID", "pairID")
        txt_rows = [(label, "( x )", "( y )", s1, s2, "c", pair_id)
                    for s1, s2, label, pair_id in rows]
        _write(root / f"snli_1.0/snli_1.0_{split}.txt", _tsv(header, *txt_rows))


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """A data root holding every non-shared task in its released layout."""
    root = tmp_path_factory.mktemp("released")
    _write_glue(root / "glue")
    _write_race(root)
    _write_scitail_and_snli(root)
    return root


def test_glue_test_splits_have_no_labels_and_keep_glue_ids(released):
    for name, split in [("sst2", "test"), ("cola", "test"), ("mrpc", "test"), ("stsb", "test"),
                        ("rte", "test"), ("qnli", "test"), ("qqp", "test"),
                        ("mnli", "test_matched"), ("mnli", "test_mismatched")]:
        examples = tasks.load_examples(name, split, released / "glue")
        assert examples and all(example.label is None for example in examples), name
        assert examples[0].uid == "0", name
    assert tasks.load_examples("cola", "test", released / "glue") == [
        Example(("Birds fly.",), None, "0")]
    assert tasks.load_examples("mnli", "test_mismatched", released / "glue")[0].texts == (
        "A test_mismatched.", "B.")


def test_rte(released):
    assert tasks.load_examples("rte", "train", released / "glue") == [
        Example(("It rains.", "It is wet."), 0, "0"), Example(("It is dry.", "It rains."), 1, "1")]
    assert tasks.load_examples("rte", "validation", released / "glue") == [
        Example(("Sun.", "Light."), 0, "0")]


def test_qnli(released):
    assert tasks.load_examples("qnli", "validation", released / "glue") == [
        Example(("When?", "It is red."), 1, "0"), Example(("Where?", "In Paris."), 0, "1")]


def test_mnli_columns_by_name_and_gold_label(released):
    train = tasks.load_examples("mnli", "train", released / "glue")
    assert train == [Example(("He went.", "He left."), 1, "0"), Example(("Yes.", "No."), 2, "1")]
    matched = tasks.load_examples("mnli", "validation_matched", released / "glue")
    assert matched == [Example(("It fell.", "It dropped."), 0, "0")]
    # label1 says neutral, the gold label contradiction: the gold label wins.
    mismatched = tasks.load_examples("mnli", "validation_mismatched", released / "glue")
    assert mismatched[0].label == 2


def test_qqp(released):
    assert tasks.load_examples("qqp", "train", released / "glue") == [
        Example(("How old?", "What age?"), 1, "133273")]


def test_small_sst2_cola_mrpc_stsb(released):
    glue = released / "glue"
    assert tasks.load_examples("sst2", "train", glue)[1] == Example(('a "bad" film ',), 0, "1")
    assert tasks.load_examples("cola", "train", glue)[1] == Example(("Cat the sat.",), 0, "1")
    assert tasks.load_examples("mrpc", "train", glue)[0] == Example(
        ('He said "yes".', "He agreed."), 1, "0")
    assert tasks.load_examples("stsb", "train", glue) == [
        Example(("A plane.", "An airplane."), 4.8, "0")]


def test_race_one_example_per_question(released):
    middle = tasks.load_examples("race/middle", "train", released)
    # Context = article + " " + question; cloze-style "_" questions stay as they are.
    assert middle == [
        Example(("Article of middle1_train.txt. What is it?", "A cat", "A dog", "A cow", "A pig"),
                1, "middle1_train.txt-0"),
        Example(("Article of middle1_train.txt. The writer thinks _ .",
                 "yes", "no", "maybe", "never"), 3, "middle1_train.txt-1"),
    ]
    high = tasks.load_examples("race/high", "validation", released)
    assert high == [Example(("Article of high7_dev.txt. Why?", "one", "two", "three", "four"), 0,
                            "high7_dev.txt-0")]
    both = tasks.load_examples("race", "test", released)
    assert [example.uid for example in both] == [
        "middle1_test.txt-0", "middle1_test.txt-1", "high7_test.txt-0"]


def test_scitail(released):
    assert tasks.load_examples("scitail", "train", released) == [
        Example(("Water boils at 100 C.", "Water boils when hot."), 0, "0"),
        Example(("Plants need light.", "Rocks are hard."), 1, "1"),
    ]
    assert len(tasks.load_examples("scitail", "test", released)) == 1


def test_snli_drops_pairs_without_gold_label(released):
    assert tasks.load_examples("snli", "train", released) == [
        Example(("A man plays.", "A person plays."), 0, "1r1e"),
        Example(("A dog runs.", "A cat sleeps."), 2, "2r1c"),
    ]
    assert tasks.load_examples("snli", "validation", released)[0].label == 1


# ---------------------------------------------------------------------------------------------
# Malformed and missing files.


def test_glue_wrong_field_count(tmp_path):
    path = _write(tmp_path / "RTE/dev.tsv", _tsv(
        ("index", "sentence1", "sentence2", "label"),
        (0, "A.", "B.", "entailment"),
        (1, "A.", "entailment")))
    with _raises_at(path, 3):
        tasks.load_examples("rte", "validation", tmp_path)


def test_glue_unparseable_label(tmp_path):
    path = _write(tmp_path / "MNLI/dev_matched.tsv", _tsv(
        MNLI_TRAIN_HEADER, (0, 1, "1n", "fiction", *MNLI_PARSES, "A.", "B.", "maybe", "maybe")))
    with _raises_at(path, 2):
        tasks.load_examples("mnli", "validation_matched", tmp_path)
    path = _write(tmp_path / "SST-2/dev.tsv", _tsv(("sentence", "label"), ("ok", 1), ("ok", 2)))
    with _raises_at(path, 3):
        tasks.load_examples("sst2", "validation", tmp_path)


def test_stsb_unparseable_score(tmp_path):
    path = _write(tmp_path / "STS-B/train.tsv", _tsv(
        STSB_HEADER, (0, "g", "f", "y", "o", "s", "s", "A.", "B.", "high")))
    with _raises_at(path, 2):
        tasks.load_examples("stsb", "train", tmp_path)


def test_glue_missing_column(tmp_path):
    path = _write(tmp_path / "QNLI/train.tsv",
                  _tsv(("index", "sentence", "label"), (0, "A.", "entailment")))
    message = f"{path}:1: header lacks column(s) ['question']"
    with pytest.raises(ValueError, match=re.escape(message)):
        tasks.load_examples("qnli", "train", tmp_path)
    # A labelled split without its label column is malformed too.
    path = _write(tmp_path / "QQP/dev.tsv", _tsv(("id", "question1", "question2"), (0, "A?", "B?")))
    message = f"{path}:1: header lacks column(s) ['is_duplicate']"
    with pytest.raises(ValueError, match=re.escape(message)):
        tasks.load_examples("qqp", "validation", tmp_path)


def test_cola_headerless_wrong_field_count(tmp_path):
    path = _write(tmp_path / "CoLA/train.tsv",
                  _tsv(("gj04", 1, "", "Fine."), ("gj04", 1, "Broken.")))
    with _raises_at(path, 2):
        tasks.load_examples("cola", "train", tmp_path)


def test_story_cloze_malformed(tmp_path):
    row = "id{n},A.,B.,C.,D.,E1.,E2.,{answer}\n"
    path = _write(tmp_path / "cloze_test_val__spring2016.csv",
                  STORY_CLOZE_HEADER + row.format(n=1, answer=1) + row.format(n=2, answer=3))
    _write(tmp_path / "cloze_test_test__spring2016.csv",
           STORY_CLOZE_HEADER + "id9,A.,B.,C.,D.,E1.\n")
    with _raises_at(path, 3):
        tasks.load_examples("story_cloze", "train", tmp_path)
    with _raises_at(tmp_path / "cloze_test_test__spring2016.csv", 2):
        tasks.load_examples("story_cloze", "test", tmp_path)


def test_story_cloze_small_file_layout(tmp_path):
    _write(tmp_path / "cloze_test_test__spring2016.csv",
           STORY_CLOZE_HEADER + 'id1,A b.,"C, d.",E.,F.,"Good ""end"".",Bad end.,2\n')
    assert tasks.load_examples("story_cloze", "test", tmp_path) == [
        Example(('A b. C, d. E. F.', 'Good "end".', "Bad end."), 1, "id1")]


def test_race_malformed(tmp_path):
    folder = tmp_path / "RACE/train/high"
    bad_json = _write(folder / "1.txt", '{"article": "x",\n "questions": [}')
    with _raises_at(bad_json, 2):
        tasks.load_examples("race/high", "train", tmp_path)
    bad_json.unlink()
    missing = _write(folder / "2.txt",
                     json.dumps({"article": "x", "questions": ["q"], "options": [["a"] * 4]}))
    with pytest.raises(ValueError, match=re.escape(f"{missing}:1: missing field(s) ['answers']")):
        tasks.load_examples("race/high", "train", tmp_path)
    missing.unlink()
    bad_answer = _race_file(folder / "3.txt", "high3.txt", [("q", ["a", "b", "c", "d"], "E")])
    with pytest.raises(ValueError, match=re.escape(f"{bad_answer}:1: question 0 has answer 'E'")):
        tasks.load_examples("race/high", "train", tmp_path)
    bad_answer.unlink()
    three = _race_file(folder / "4.txt", "high4.txt", [("q", ["a", "b", "c"], "A")])
    with _raises_at(three, 1):
        tasks.load_examples("race/high", "train", tmp_path)


def test_snli_malformed(tmp_path):
    path = tmp_path / "snli_1.0/snli_1.0_train.jsonl"
    good = json.dumps({"sentence1": "A.", "sentence2": "B.", "gold_label": "neutral"})
    _write(path, good + "\n{not json\n")
    with _raises_at(path, 2):
        tasks.load_examples("snli", "train", tmp_path)
    _write(path, good + "\n" + json.dumps({"sentence1": "A.", "gold_label": "neutral"}) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: missing field(s) ['sentence2']")):
        tasks.load_examples("snli", "train", tmp_path)
    _write(path, json.dumps({"sentence1": "A.", "sentence2": "B.", "gold_label": "unsure"}) + "\n")
    with _raises_at(path, 1):
        tasks.load_examples("snli", "train", tmp_path)


def test_scitail_malformed(tmp_path):
    path = _write(tmp_path / "SciTailV1.1/tsv_format/scitail_1.0_dev.tsv",
                  _tsv(("A.", "B.", "entails"), ("A.", "B.")))
    with _raises_at(path, 2):
        tasks.load_examples("scitail", "validation", tmp_path)
    _write(path, _tsv(("A.", "B.", "contradiction")))
    with _raises_at(path, 1):
        tasks.load_examples("scitail", "validation", tmp_path)


@pytest.mark.parametrize("name, split, expected_path, layout_hint", [
    ("sst2", "validation", "SST-2/dev.tsv", "as unpacked from GLUE"),
    ("mnli", "validation_mismatched", "MNLI/dev_mismatched.tsv", "MNLI/{train.tsv,dev_matched.tsv"),
    ("story_cloze", "test", "cloze_test_test__spring2016 - cloze_test_ALL_test.csv", "*test*.csv"),
    ("race", "validation", "RACE/dev/middle", "RACE/{train,dev,test}/{middle,high}/*.txt"),
    ("scitail", "train", "SciTailV1.1/tsv_format/scitail_1.0_train.tsv",
     "scitail_1.0_{train,dev,test}"),
    ("snli", "test", "snli_1.0/snli_1.0_test.jsonl", "snli_1.0_{train,dev,test}.jsonl"),
])
def test_missing_files_name_the_expected_path_and_layout(
        tmp_path, name, split, expected_path, layout_hint):
    with pytest.raises(DataError) as error:
        tasks.load_examples(name, split, tmp_path)
    assert str(tmp_path / expected_path) in str(error.value)
    assert layout_hint in str(error.value)


# ---------------------------------------------------------------------------------------------
# TFDS: the real builders prepared (array_record, no TensorFlow) from files in the released
# layouts, read back through tfds.data_source.

TFDS_DATASETS = ["glue/sst2", "glue/cola", "glue/mrpc", "glue/qqp", "glue/stsb", "glue/mnli",
                 "glue/qnli", "glue/rte", "snli", "sci_tail", "race/middle", "race/high",
                 "story_cloze/2016"]


def _write_mrpc_sources(folder: Path, glue: Path) -> None:
    """The MSR files the TFDS MRPC builder downloads, holding the same pairs as glue/MRPC."""
    train_rows = (glue / "MRPC/train.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    dev_rows = (glue / "MRPC/dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    # The builder skips three bytes for the BOM, so the file must start with one.
    all_rows = "".join(row + "\n" for row in train_rows + dev_rows)
    _write(folder / "train", "\ufeff" + _tsv(MRPC_HEADER) + all_rows)
    _write(folder / "dev_ids", _tsv(*[row.split("\t")[1:3] for row in dev_rows]))
    test_rows = (glue / "MRPC/test.tsv").read_text(encoding="utf-8").splitlines()[1:]
    _write(folder / "test", _tsv(MRPC_HEADER, *[["0", *row.split("\t")[1:]] for row in test_rows]))


@pytest.fixture(scope="module")
def tfds_dir(released, story_cloze_dir, tmp_path_factory) -> str:
    """Every TFDS dataset the tasks use, prepared from local files with downloads redirected."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow_datasets.core.dataset_builder as dataset_builder
    import tensorflow_datasets.text.glue  # noqa: F401  (registers the legacy "glue" builder)
    from etils import epath
    from tensorflow_datasets.core.features import feature as feature_lib

    data_dir = tmp_path_factory.mktemp("tfds")
    manual_dir = tmp_path_factory.mktemp("manual")
    _copy_story_cloze_as_tfds_names(story_cloze_dir, manual_dir)
    _write_mrpc_sources(released / "msr", released / "glue")

    def local_copy(self, url_or_urls):
        if isinstance(url_or_urls, dict):  # MRPC's three MSR files
            return {key: epath.Path(released / "msr" / key) for key in url_or_urls}
        # Each builder joins its own sub-path (e.g. "snli_1.0") onto the extracted folder.
        return epath.Path(released / "glue" if "glue" in url_or_urls else released)

    tfds.disable_progress_bar()
    # Two stand-ins for what TFDS 4.9.10 needs only when WRITING a dataset without TensorFlow
    # (reading, which the project does, needs neither): it names the uninstalled package
    # importlib_resources while writing metadata, and it asks TensorFlow for the dtype of
    # nested sequences (RACE's options) while serializing.
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", local_copy), \
            mock.patch.object(tfds.download.DownloadManager, "download", local_copy), \
            mock.patch.object(dataset_builder, "importlib_resources",
                              types.SimpleNamespace(abc=importlib.resources.abc)), \
            mock.patch.object(feature_lib.TensorInfo, "dtype",
                              property(lambda info: info.np_dtype)):
        for name in TFDS_DATASETS:
            builder = tfds.builder(name, data_dir=str(data_dir), file_format="array_record")
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return str(data_dir)


def _content(examples):
    """Examples without uids, in a canonical order: TFDS stores records in its own order."""
    return sorted((example.texts, example.label) for example in examples)


FILE_DIRS = {"sst2": "glue", "cola": "glue", "mrpc": "glue", "qqp": "glue", "stsb": "glue",
             "mnli": "glue", "qnli": "glue", "rte": "glue", "snli": "", "scitail": "",
             "race": "", "race/middle": "", "race/high": ""}


@pytest.mark.parametrize("name", sorted(FILE_DIRS))
def test_tfds_reader_matches_the_files_reader(name, tfds_dir, released):
    for split in tasks.get_task(name).splits:
        from_tfds = tasks.load_examples(name, split, tfds_dir, source="tfds")
        from_files = tasks.load_examples(name, split, released / FILE_DIRS[name])
        assert from_tfds, (name, split)
        assert _content(from_tfds) == _content(from_files), (name, split)
        assert all(isinstance(text, str) for example in from_tfds for text in example.texts)


def test_tfds_uids(tfds_dir):
    race = tasks.load_examples("race/middle", "train", tfds_dir, source="tfds")
    assert sorted(example.uid for example in race) == ["middle1_train.txt-0", "middle1_train.txt-1"]
    rte = tasks.load_examples("rte", "train", tfds_dir, source="tfds")
    assert sorted(example.uid for example in rte) == ["0", "1"]


def test_tfds_story_cloze_real(tfds_dir, story_cloze_dir):
    test = tasks.load_examples("story_cloze", "test", tfds_dir, source="tfds")
    assert _content(test) == _content(tasks.load_examples("story_cloze", "test", story_cloze_dir))
    train = tasks.load_examples("story_cloze", "train", tfds_dir, source="tfds")
    validation = tasks.load_examples("story_cloze", "validation", tfds_dir, source="tfds")
    assert (len(train), len(validation)) == (1497, 374)
    from_files = tasks.load_examples("story_cloze", "train", story_cloze_dir) + tasks.load_examples(
        "story_cloze", "validation", story_cloze_dir)
    assert _content(train + validation) == _content(from_files)


def _mocked_getitems(record_keys, generator, serialized=False):
    """TFDS 4.9.10's mock sets `__getitems__` to a partial that expects a `self` it never gets."""
    assert not serialized
    return [generator[key] for key in record_keys]


def test_tfds_mock_data_serves_data_source(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr("tensorflow_datasets.testing.mocking._getitems", _mocked_getitems)
    with tfds.testing.mock_data(num_examples=3):
        for name, split in [("sst2", "train"), ("qqp", "validation"),
                            ("mnli", "validation_matched"), ("stsb", "train"), ("snli", "test"),
                            ("scitail", "train")]:
            spec = tasks.get_task(name)
            examples = tasks.load_examples(name, split, source="tfds")
            assert len(examples) == 3, name
            for example in examples:
                assert len(example.texts) == len(tasks._TFDS_TEXT_FEATURES[name])
                assert all(isinstance(text, str) for text in example.texts)
                if spec.target == "regression":
                    assert isinstance(example.label, float)
                else:
                    assert example.label in range(spec.num_labels)


def test_tfds_mock_data_with_given_records():
    tfds = pytest.importorskip("tensorflow_datasets")
    record = {"article": np.array(b"Text."), "example_id": b"high9.txt",
              "questions": np.array([b"Why?"]), "answers": np.array([b"C"]),
              "options": np.array([[b"a", b"b", b"c", b"d"]])}

    def as_data_source(self, split, **kwargs):
        return [record]

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        assert tasks.load_examples("race/high", "test", source="tfds") == [
            Example(("Text. Why?", "a", "b", "c", "d"), 2, "high9.txt-0")]
