"""The paper's 12 fine-tuning tasks: what each one is, and readers for its data.

`get_task(name)` gives a `TaskSpec`; `load_examples(name, split, data_dir, source)` gives a list
of `Example`s, read either from the files as they are released ("files") or from a prepared
TFDS dataset ("tfds", through `tfds.data_source`, which needs no TensorFlow).

Example convention (`Example.texts`, in the order the input transformation takes them):
  classification   (sentence,)
  entailment       (premise, hypothesis); QNLI: (question, sentence)
  similarity       (sentence_a, sentence_b); the transformation adds the swapped order itself
  multiple choice  (context, answer_1, ..., answer_k); RACE context = article + " " + question,
                   Story Cloze context = the four story sentences joined by single spaces
Texts are exactly as in the files (no stripping or normalising: the tokenizer does that).
Labels: a class index into `TaskSpec.label_names`, the index of the right answer for multiple
choice, a float score for STS-B, and None where the split has no labels (GLUE test sets).
`uid` is unique within a split: the id the data set gives (GLUE `index`/`id` column, RACE file id
plus question number, Story Cloze story id, SNLI pair id), else the 0-based row number.

Story Cloze has no training set of its own: like the original code, `train` (1,497) and
`validation` (374) are cut from the spring-2016 validation file and `test` is the test file.
See `story_cloze_split`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from gpt1_jax.data import tfds_source
from gpt1_jax.errors import DataError
from gpt1_jax.metrics import TASK_METRICS

# ---------------------------------------------------------------------------------------------
# What the tasks are.


@dataclasses.dataclass(frozen=True)
class Example:
    """One task example; see the module docstring for the order of `texts`."""

    texts: tuple[str, ...]
    label: int | float | None
    uid: str


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A fine-tuning task.

    kind: the input transformation, "classification" | "entailment" | "similarity" |
      "multiple_choice" (see `gpt1_jax.data.transforms`).
    target: what the head predicts, "classification" | "regression" | "multiple_choice"
      (a softmax over the k answer sequences). STS-B is similarity + regression, MRPC and QQP
      similarity + classification.
    num_labels: classes; 1 for regression; the number of answers for multiple choice.
    label_names: the name of each label index (empty for regression).
    metrics: metric keys of `gpt1_jax.metrics.compute_metrics`, the paper's one first.
    splits: the split names `load_examples` accepts.
    eval_splits: where the task is scored (the dev sets; Story Cloze: its labelled test set).
    test_has_labels: whether the test split is labelled (not for GLUE, whose test labels are
      private; the paper reports test numbers for SNLI, SciTail, RACE and Story Cloze).
    tfds_names: the TFDS dataset(s) for `source="tfds"` (RACE "all" reads both levels).
    """

    name: str
    kind: str
    target: str
    num_labels: int
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    splits: tuple[str, ...]
    eval_splits: tuple[str, ...]
    test_has_labels: bool
    tfds_names: tuple[str, ...]


_SPLITS = ("train", "validation", "test")
_MNLI_SPLITS = (
    "train",
    "validation_matched",
    "validation_mismatched",
    "test_matched",
    "test_mismatched",
)
_NLI_LABELS = ("entailment", "neutral", "contradiction")
_RACE_LETTERS = "ABCD"


def _spec(
    name: str,
    kind: str,
    label_names: Sequence[str],
    tfds_names: Sequence[str],
    *,
    target: str = "classification",
    num_labels: int | None = None,
    splits: tuple[str, ...] = _SPLITS,
    eval_splits: tuple[str, ...] = ("validation",),
    test_has_labels: bool = False,
) -> TaskSpec:
    """A TaskSpec with the usual defaults; metrics come from the metrics registry."""
    return TaskSpec(
        name=name,
        kind=kind,
        target=target,
        num_labels=len(label_names) if num_labels is None else num_labels,
        label_names=tuple(label_names),
        metrics=TASK_METRICS[name],
        splits=splits,
        eval_splits=eval_splits,
        test_has_labels=test_has_labels,
        tfds_names=tuple(tfds_names),
    )


def _race_spec(name: str, tfds_names: Sequence[str]) -> TaskSpec:
    return _spec(name, "multiple_choice", _RACE_LETTERS, tfds_names, target="multiple_choice",
                 test_has_labels=True)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        _spec("mnli", "entailment", _NLI_LABELS, ["glue/mnli"], splits=_MNLI_SPLITS,
              eval_splits=("validation_matched", "validation_mismatched")),
        _spec("snli", "entailment", _NLI_LABELS, ["snli"], test_has_labels=True),
        _spec("scitail", "entailment", ("entails", "neutral"), ["sci_tail"],
              test_has_labels=True),
        _spec("qnli", "entailment", ("entailment", "not_entailment"), ["glue/qnli"]),
        _spec("rte", "entailment", ("entailment", "not_entailment"), ["glue/rte"]),
        _race_spec("race", ["race/middle", "race/high"]),
        _race_spec("race/middle", ["race/middle"]),
        _race_spec("race/high", ["race/high"]),
        _spec("story_cloze", "multiple_choice", ("ending_1", "ending_2"), ["story_cloze/2016"],
              target="multiple_choice", eval_splits=("test",), test_has_labels=True),
        _spec("mrpc", "similarity", ("not_equivalent", "equivalent"), ["glue/mrpc"]),
        _spec("qqp", "similarity", ("not_duplicate", "duplicate"), ["glue/qqp"]),
        _spec("stsb", "similarity", (), ["glue/stsb"], target="regression", num_labels=1),
        _spec("cola", "classification", ("unacceptable", "acceptable"), ["glue/cola"]),
        _spec("sst2", "classification", ("negative", "positive"), ["glue/sst2"]),
    ]
}


def get_task(name: str) -> TaskSpec:
    """The TaskSpec of a task name, e.g. "mnli", "race/high", "story_cloze"."""
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def load_examples(
    task_name: str, split: str, data_dir: str | Path | None = None, source: str = "files"
) -> list[Example]:
    """The examples of one split of a task.

    source="files": `data_dir` holds the released files in the task's layout (see
      `FILE_LAYOUTS`); required.
    source="tfds": read the prepared TFDS dataset(s) named in `TaskSpec.tfds_names` from
      `data_dir` (None: TFDS's default directory).
    """
    spec = get_task(task_name)
    if split not in spec.splits:
        raise DataError(
            f"task {spec.name!r} has no split {split!r}; splits: {', '.join(spec.splits)}"
        )
    if source == "files":
        if data_dir is None:
            raise DataError(f"source='files' needs data_dir; layout: {FILE_LAYOUTS[spec.name]}")
        return _FILE_READERS[spec.name](Path(data_dir), split)
    if source == "tfds":
        return _load_tfds(spec, split, None if data_dir is None else str(data_dir))
    raise DataError(f"unknown source {source!r}; known: files, tfds")


# ---------------------------------------------------------------------------------------------
# Story Cloze: the original's train/validation cut of the spring-2016 validation stories.

STORY_CLOZE_SEED = 3535999445
STORY_CLOZE_N_VALID = 374


def story_cloze_split(
    examples: Sequence[Example], n_valid: int = STORY_CLOZE_N_VALID, seed: int = STORY_CLOZE_SEED
) -> tuple[list[Example], list[Example]]:
    """(train, validation) cut exactly as the original's `train_test_split(..., test_size=374,
    random_state=3535999445)` does.

    scikit-learn's `train_test_split` runs `ShuffleSplit`, which draws
    `check_random_state(seed).permutation(n)` -- for an int seed that is
    `np.random.RandomState(seed).permutation(n)`, whose stream NumPy keeps frozen -- takes the
    first `n_valid` indices as the held-out part and the rest as train, and returns both parts
    in permutation order. Given the stories in file order this yields the original's 1,497 and
    374, in the original's order.
    """
    permutation = np.random.RandomState(seed).permutation(len(examples))
    train = [examples[i] for i in permutation[n_valid:]]
    validation = [examples[i] for i in permutation[:n_valid]]
    return train, validation


# ---------------------------------------------------------------------------------------------
# Reading the released files.

_GLUE_SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_MNLI_SPLIT_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv",
    "test_mismatched": "test_mismatched.tsv",
}
# Released data sets call the validation split "dev".
_DEV_NAMES = {"train": "train", "validation": "dev", "test": "test"}


@dataclasses.dataclass(frozen=True)
class _GlueLayout:
    """Where a GLUE task's TSVs are and which columns hold what."""

    task_dir: str
    text_columns: tuple[str, ...]
    label_column: str
    split_files: Mapping[str, str] = dataclasses.field(default_factory=lambda: _GLUE_SPLIT_FILES)
    # CoLA's train and dev files have no header line: these names stand in for one.
    headerless_columns: tuple[str, ...] = ()


_GLUE_LAYOUTS = {
    "sst2": _GlueLayout("SST-2", ("sentence",), "label"),
    "cola": _GlueLayout("CoLA", ("sentence",), "label",
                        headerless_columns=("source", "label", "original_label", "sentence")),
    "mrpc": _GlueLayout("MRPC", ("#1 String", "#2 String"), "Quality"),
    "stsb": _GlueLayout("STS-B", ("sentence1", "sentence2"), "score"),
    "rte": _GlueLayout("RTE", ("sentence1", "sentence2"), "label"),
    "qnli": _GlueLayout("QNLI", ("question", "sentence"), "label"),
    "mnli": _GlueLayout("MNLI", ("sentence1", "sentence2"), "gold_label",
                        split_files=_MNLI_SPLIT_FILES),
    "qqp": _GlueLayout("QQP", ("question1", "question2"), "is_duplicate"),
}
# Columns that carry GLUE's own example id (test predictions are submitted by it).
_GLUE_ID_COLUMNS = ("index", "id")

_STORY_CLOZE_FILES = {
    "val": "cloze_test_val__spring2016 - cloze_test_ALL_val.csv",
    "test": "cloze_test_test__spring2016 - cloze_test_ALL_test.csv",
}
_STORY_CLOZE_SENTENCES = ("InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4")
_STORY_CLOZE_ENDINGS = ("RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2")

FILE_LAYOUTS: dict[str, str] = {
    **{
        name: f"<data_dir>/{layout.task_dir}/{{{','.join(layout.split_files.values())}}} "
              "as unpacked from GLUE"
        for name, layout in _GLUE_LAYOUTS.items()
    },
    "story_cloze": f"<data_dir>/'{_STORY_CLOZE_FILES['val']}' and '{_STORY_CLOZE_FILES['test']}' "
                   "(or any single *val*.csv and *test*.csv there)",
    "race": "<data_dir>/RACE/{train,dev,test}/{middle,high}/*.txt (one JSON object per file)",
    "scitail": "<data_dir>/SciTailV1.1/tsv_format/scitail_1.0_{train,dev,test}.tsv",
    "snli": "<data_dir>/snli_1.0/snli_1.0_{train,dev,test}.jsonl",
}
FILE_LAYOUTS["race/middle"] = FILE_LAYOUTS["race/high"] = FILE_LAYOUTS["race"]


def _row_error(path: Path, line_number: int, problem: str) -> DataError:
    """A malformed-data error that names the file and the 1-based line."""
    return DataError(f"{path}:{line_number}: {problem}")


def _require_file(path: Path, task_name: str) -> Path:
    if not path.is_file():
        raise DataError(f"{task_name}: expected {path}; layout: {FILE_LAYOUTS[task_name]}")
    return path


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Undecodable bytes and broken CSV quoting as a DataError naming the file."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    except csv.Error as error:
        raise DataError(f"{path}: malformed CSV ({error})") from None


def _tsv_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, tab-separated fields) of each non-empty line.

    Fields are split on tabs only, never unquoted: GLUE sentences contain bare `"`. Lines end at
    "\\n" only (texts may hold other Unicode line breaks), and a UTF-8 BOM (MRPC) is dropped.
    """
    with _reading(path), open(path, encoding="utf-8-sig", newline="\n") as f:
        for line_number, line in enumerate(f, start=1):
            line = line.removesuffix("\n").removesuffix("\r")
            if line:
                yield line_number, line.split("\t")


def _class_label(value: str, label_names: Sequence[str], path: Path, line_number: int) -> int:
    """A label given by name ("entailment") or by index ("1")."""
    if value in label_names:
        return label_names.index(value)
    indices = {str(i): i for i in range(len(label_names))}
    if value in indices:
        return indices[value]
    raise _row_error(path, line_number, f"label {value!r} is none of {', '.join(label_names)} "
                                        f"or 0..{len(label_names) - 1}")


def _score_label(value: str, path: Path, line_number: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise _row_error(path, line_number, f"score {value!r} is not a number") from None


def _read_glue(task_name: str, data_dir: Path, split: str) -> list[Example]:
    """A GLUE TSV; columns are found by header name (by position only for headerless CoLA)."""
    spec, layout = TASKS[task_name], _GLUE_LAYOUTS[task_name]
    path = _require_file(data_dir / layout.task_dir / layout.split_files[split], task_name)
    lines = _tsv_lines(path)
    # CoLA's test file, unlike its train and dev files, has a header.
    if layout.headerless_columns and not split.startswith("test"):
        header = list(layout.headerless_columns)
    else:
        header = next(lines, (1, []))[1]
    missing = [name for name in layout.text_columns if name not in header]
    # Test files carry no labels; every other split must.
    has_label = layout.label_column in header
    if not has_label and not split.startswith("test"):
        missing.append(layout.label_column)
    if missing:
        raise _row_error(path, 1, f"header lacks column(s) {missing}; found {header}")
    text_indices = [header.index(name) for name in layout.text_columns]
    label_index = header.index(layout.label_column) if has_label else None
    id_index = next((header.index(name) for name in _GLUE_ID_COLUMNS if name in header), None)

    examples = []
    for line_number, fields in lines:
        if len(fields) != len(header):
            raise _row_error(path, line_number, f"expected {len(header)} tab-separated fields, "
                                                f"found {len(fields)}")
        if label_index is None:
            label = None
        elif spec.target == "regression":
            label = _score_label(fields[label_index], path, line_number)
        else:
            label = _class_label(fields[label_index], spec.label_names, path, line_number)
        uid = fields[id_index] if id_index is not None else str(len(examples))
        examples.append(Example(tuple(fields[i] for i in text_indices), label, uid))
    return examples


def _story_cloze_file(data_dir: Path, which: str) -> Path:
    """The val or test CSV: the original name, else the one *val*.csv / *test*.csv there."""
    original = data_dir / _STORY_CLOZE_FILES[which]
    if original.is_file():
        return original
    # Both original names contain "test", so a test file is one that does not say "val".
    candidates = sorted(
        path for path in data_dir.glob(f"*{which}*.csv")
        if which == "val" or "val" not in path.name
    )
    if len(candidates) > 1:
        # A folder holding the 2016 and 2018 releases: the paper used spring 2016.
        candidates = [path for path in candidates if "2016" in path.name] or candidates
    if not candidates:
        return _require_file(original, "story_cloze")  # raises, naming the expected file
    if len(candidates) > 1:
        raise DataError(f"story_cloze: several {which} files in {data_dir}: "
                         f"{[path.name for path in candidates]}")
    return candidates[0]


def _read_story_cloze_csv(path: Path) -> list[Example]:
    """Stories of a spring-2016 CSV; AnswerRightEnding 1/2 becomes label 0/1."""
    required = ("InputStoryid", *_STORY_CLOZE_SENTENCES, *_STORY_CLOZE_ENDINGS, "AnswerRightEnding")
    with _reading(path), open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        missing = [name for name in required if name not in header]
        if missing:
            raise _row_error(path, 1, f"header lacks column(s) {missing}; found {header}")
        column = {name: header.index(name) for name in required}
        examples = []
        for fields in reader:
            # A quoted field may span lines; report where the record ends.
            line_number = reader.line_num
            if not fields:
                continue
            if len(fields) != len(header):
                raise _row_error(path, line_number, f"expected {len(header)} comma-separated "
                                                    f"fields, found {len(fields)}")
            answer = fields[column["AnswerRightEnding"]]
            if answer not in ("1", "2"):
                raise _row_error(path, line_number, f"AnswerRightEnding {answer!r} is not 1 or 2")
            context = " ".join(fields[column[name]] for name in _STORY_CLOZE_SENTENCES)
            endings = tuple(fields[column[name]] for name in _STORY_CLOZE_ENDINGS)
            examples.append(
                Example((context, *endings), int(answer) - 1, fields[column["InputStoryid"]])
            )
    return examples


def _read_story_cloze(data_dir: Path, split: str) -> list[Example]:
    if split == "test":
        return _read_story_cloze_csv(_story_cloze_file(data_dir, "test"))
    train, validation = story_cloze_split(_read_story_cloze_csv(_story_cloze_file(data_dir, "val")))
    return train if split == "train" else validation


def _race_examples(path: Path) -> list[Example]:
    """The questions of one RACE file, one Example each."""
    try:
        with _reading(path):
            record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise _row_error(path, error.lineno, f"bad JSON: {error.msg}") from None
    if not isinstance(record, dict):
        raise _row_error(path, 1, "expected a JSON object")
    missing = [key for key in ("article", "questions", "options", "answers") if key not in record]
    if missing:
        raise _row_error(path, 1, f"missing field(s) {missing}")
    questions, options, answers = record["questions"], record["options"], record["answers"]
    if not all(isinstance(x, list) for x in (questions, options, answers)) or not isinstance(
            record["article"], str):
        raise _row_error(path, 1, "expected a text article and lists of questions, options and answers")
    if not len(questions) == len(options) == len(answers):
        raise _row_error(path, 1, f"{len(questions)} questions, {len(options)} option lists and "
                                  f"{len(answers)} answers")
    file_id = str(record.get("id", path.name))
    examples = []
    for number, (question, choices, answer) in enumerate(zip(questions, options, answers)):
        if not isinstance(question, str) or not isinstance(choices, list) or not all(
                isinstance(choice, str) for choice in choices):
            raise _row_error(path, 1, f"question {number}: expected a text question and a list of text options")
        if len(choices) != len(_RACE_LETTERS):
            raise _row_error(path, 1, f"question {number} has {len(choices)} options, not 4")
        if answer not in tuple(_RACE_LETTERS):
            raise _row_error(path, 1, f"question {number} has answer {answer!r}, not one of A-D")
        context = record["article"] + " " + question
        examples.append(
            Example((context, *choices), _RACE_LETTERS.index(answer), f"{file_id}-{number}")
        )
    return examples


def _read_race(levels: Sequence[str], task_name: str, data_dir: Path, split: str) -> list[Example]:
    """RACE questions of the given levels (middle, high), files in name order."""
    examples = []
    for level in levels:
        folder = data_dir / "RACE" / _DEV_NAMES[split] / level
        if not folder.is_dir():
            raise DataError(f"{task_name}: expected folder {folder}; layout: {FILE_LAYOUTS[task_name]}")
        for path in sorted(folder.glob("*.txt")):
            examples += _race_examples(path)
    return examples


def _read_scitail(data_dir: Path, split: str) -> list[Example]:
    """SciTail's tsv_format: premise, hypothesis, label (entails/neutral); no header."""
    file_name = f"scitail_1.0_{_DEV_NAMES[split]}.tsv"
    path = _require_file(data_dir / "SciTailV1.1" / "tsv_format" / file_name, "scitail")
    label_names = TASKS["scitail"].label_names
    examples = []
    for line_number, fields in _tsv_lines(path):
        if len(fields) != 3:
            raise _row_error(
                path, line_number, f"expected 3 tab-separated fields, found {len(fields)}"
            )
        premise, hypothesis, label = fields
        label_index = _class_label(label, label_names, path, line_number)
        examples.append(Example((premise, hypothesis), label_index, str(len(examples))))
    return examples


def _read_snli(data_dir: Path, split: str) -> list[Example]:
    """SNLI's jsonl; pairs whose gold label is "-" (no annotator majority) are dropped."""
    path = _require_file(data_dir / "snli_1.0" / f"snli_1.0_{_DEV_NAMES[split]}.jsonl", "snli")
    label_names = TASKS["snli"].label_names
    examples = []
    with _reading(path), open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise _row_error(path, line_number, f"bad JSON: {error.msg}") from None
            if not isinstance(record, dict):
                raise _row_error(path, line_number, "expected a JSON object")
            missing = [key for key in ("sentence1", "sentence2", "gold_label") if key not in record]
            if missing:
                raise _row_error(path, line_number, f"missing field(s) {missing}")
            if record["gold_label"] == "-":
                continue
            label = _class_label(record["gold_label"], label_names, path, line_number)
            uid = str(record.get("pairID", line_number - 1))
            examples.append(Example((record["sentence1"], record["sentence2"]), label, uid))
    return examples


_FILE_READERS: dict[str, Callable[[Path, str], list[Example]]] = {
    **{name: functools.partial(_read_glue, name) for name in _GLUE_LAYOUTS},
    "story_cloze": _read_story_cloze,
    "race": functools.partial(_read_race, ("middle", "high"), "race"),
    "race/middle": functools.partial(_read_race, ("middle",), "race/middle"),
    "race/high": functools.partial(_read_race, ("high",), "race/high"),
    "scitail": _read_scitail,
    "snli": _read_snli,
}


# ---------------------------------------------------------------------------------------------
# Reading prepared TFDS datasets.

# TFDS feature names of the texts, in Example order.
_TFDS_TEXT_FEATURES = {
    "sst2": ("sentence",),
    "cola": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "snli": ("premise", "hypothesis"),
    "scitail": ("premise", "hypothesis"),
}
_TFDS_READ_CHUNK = 1024


def _as_str(value) -> str:
    """A TFDS text value as str: real data sources give bytes, mocked ones str or 0-d arrays."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tfds_records(name: str, split: str, data_dir: str | None) -> Iterator[dict]:
    """Every record of a TFDS split, read in chunks (one random access per record is slow)."""
    source = tfds_source.open_split(name, split, data_dir)
    read_many = getattr(source, "__getitems__", None)
    for start in range(0, len(source), _TFDS_READ_CHUNK):
        keys = list(range(start, min(start + _TFDS_READ_CHUNK, len(source))))
        yield from read_many(keys) if read_many else (source[key] for key in keys)


def _tfds_split(spec: TaskSpec, split: str) -> str:
    if spec.name.startswith("race"):
        return _DEV_NAMES[split]
    if spec.name == "story_cloze" and split != "test":
        return "validation"
    return split


def _text_examples_from_tfds(spec: TaskSpec, records: Iterator[dict]) -> list[Example]:
    """GLUE, SNLI, SciTail records. Label -1 means unlabelled: None for GLUE test sets, and the
    pair is dropped for SNLI (its "-" gold labels), as the files reader does."""
    examples = []
    for position, record in enumerate(records):
        texts = tuple(_as_str(record[feature]) for feature in _TFDS_TEXT_FEATURES[spec.name])
        label = np.asarray(record["label"]).item()
        if label == -1:
            if spec.name == "snli":
                continue
            label = None
        elif spec.target == "regression":
            # TFDS keeps scores as float32; its shortest repr gives back the file's decimal
            # (4.8, not 4.800000190734863), so both sources agree exactly.
            label = float(str(np.float32(label)))
        else:
            label = int(label)
        uid = str(int(np.asarray(record["idx"]))) if "idx" in record else str(position)
        examples.append(Example(texts, label, uid))
    return examples


def _race_from_tfds(records: Iterator[dict]) -> list[Example]:
    examples = []
    for record in records:
        article, file_id = _as_str(record["article"]), _as_str(record["example_id"])
        for number, (question, choices, answer) in enumerate(
            zip(record["questions"], record["options"], record["answers"])
        ):
            answer = _as_str(answer)
            if answer not in tuple(_RACE_LETTERS):
                raise DataError(f"RACE {file_id} question {number}: answer {answer!r} is not A-D")
            context = article + " " + _as_str(question)
            texts = (context, *(_as_str(choice) for choice in choices))
            examples.append(Example(texts, _RACE_LETTERS.index(answer), f"{file_id}-{number}"))
    return examples


def _story_cloze_from_tfds(records: Iterator[dict]) -> list[Example]:
    """TFDS keeps AnswerRightEnding (1 or 2) as the label, and no story id."""
    return [
        Example(
            (_as_str(record["context"]), *(_as_str(ending) for ending in record["endings"])),
            int(np.asarray(record["label"])) - 1,
            str(position),
        )
        for position, record in enumerate(records)
    ]


def _load_tfds(spec: TaskSpec, split: str, data_dir: str | None) -> list[Example]:
    """Examples from prepared TFDS datasets.

    Story Cloze: TFDS stores the validation stories in its own (hashed) order, not the CSV's,
    so `story_cloze_split` over it gives a deterministic 1,497/374 cut that is NOT the
    original's; use source="files" to reproduce the paper's split.
    """
    if any(name.startswith("glue/") for name in spec.tfds_names):
        # TFDS imports its legacy builders lazily; importing this module registers "glue".
        # Imported here: TFDS is optional and slow to import.
        import tensorflow_datasets.text.glue  # noqa: F401

    tfds_split = _tfds_split(spec, split)
    records = (
        record
        for name in spec.tfds_names
        for record in _tfds_records(name, tfds_split, data_dir)
    )
    if spec.name.startswith("race"):
        return _race_from_tfds(records)
    if spec.name == "story_cloze":
        examples = _story_cloze_from_tfds(records)
        if split == "test":
            return examples
        train, validation = story_cloze_split(examples)
        return train if split == "train" else validation
    return _text_examples_from_tfds(spec, records)
