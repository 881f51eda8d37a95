"""Every data reader raises the project's DataError naming the file (and the line) and what was
expected, one kind of malformation at a time; TFDS is opened without downloads, and a dataset,
name or split that is not there is one DataError saying where TFDS looked. A job meeting any of
them ends with one `error:` line.
"""
import re
import time

import pytest
import tensorflow_datasets as tfds

import jobs
from gpt1_jax.data import corpus, tasks, tfds_source
from gpt1_jax.errors import DataError

SST2_HEADER = "sentence\tlabel\n"
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


def write(path, text: str, encoding: str = "utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


# (task, relative file, content, split, the line, what the message says)
MALFORMED = [
    ("sst2", "SST-2/dev.tsv", "sentence\n", "validation", 1, "header lacks column(s) ['label']"),
    ("sst2", "SST-2/dev.tsv", SST2_HEADER + "good\t1\textra\n", "validation", 2,
     "expected 2 tab-separated fields, found 3"),
    ("sst2", "SST-2/dev.tsv", SST2_HEADER + "good\t1\nfine\n", "validation", 3,
     "expected 2 tab-separated fields, found 1"),
    ("sst2", "SST-2/dev.tsv", SST2_HEADER + "good\t7\n", "validation", 2, "label '7' is none of"),
    ("stsb", "STS-B/dev.tsv", STSB_HEADER + "0\tg\tf\t2012\t1\ts\ts\ta\tb\thigh\n", "validation", 2,
     "score 'high' is not a number"),
    ("mnli", "MNLI/dev_matched.tsv", "sentence1\tsentence2\tgold_label\na\tb\tmaybe\n",
     "validation_matched", 2, "label 'maybe' is none of entailment, neutral, contradiction"),
    ("scitail", "SciTailV1.1/tsv_format/scitail_1.0_dev.tsv", "p\th\n", "validation", 1,
     "expected 3 tab-separated fields, found 2"),
    ("snli", "snli_1.0/snli_1.0_dev.jsonl", '{"sentence1": "a", "sentence2": "b", "gold_label": "x"}\n',
     "validation", 1, "label 'x' is none of"),
    ("snli", "snli_1.0/snli_1.0_dev.jsonl", "[1, 2]\n", "validation", 1, "expected a JSON object"),
    ("snli", "snli_1.0/snli_1.0_dev.jsonl", "{not json\n", "validation", 1, "bad JSON"),
    ("race", "RACE/dev/middle/1.txt", '{"article": "a", "questions": ["q"], "options": "abcd", '
     '"answers": ["A"]}', "validation", 1, "lists of questions, options and answers"),
    ("race", "RACE/dev/middle/1.txt", '{"article": "a", "questions": ["q"], "options": [["a", "b"]], '
     '"answers": ["A"]}', "validation", 1, "question 0 has 2 options, not 4"),
]


@pytest.mark.parametrize("task, relative, content, split, line, expected", MALFORMED,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)])
def test_a_malformed_task_file_is_a_data_error_naming_file_line_and_expectation(
        tmp_path, task, relative, content, split, line, expected):
    path = write(tmp_path / relative, content)
    if task == "race":
        (tmp_path / "RACE/dev/high").mkdir(parents=True)
    with pytest.raises(DataError) as error:
        tasks.load_examples(task, split, tmp_path)
    assert str(error.value).startswith(f"{path}:{line}: "), error.value
    assert expected in str(error.value)


def test_undecodable_bytes_and_broken_csv_name_the_file(tmp_path):
    path = write(tmp_path / "SST-2/dev.tsv", SST2_HEADER.encode() + b"caf\xe9\t1\n")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: not UTF-8 text"):
        tasks.load_examples("sst2", "validation", tmp_path)
    header = ("InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
              "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n")
    csv_path = write(tmp_path / "sc" / "cloze_test_test__spring2016 - cloze_test_ALL_test.csv",
                     header + "id,a,b,c,d,e,f,3\n")
    with pytest.raises(DataError, match="AnswerRightEnding '3' is not 1 or 2"):
        tasks.load_examples("story_cloze", "test", tmp_path / "sc")
    assert csv_path.is_file()


def test_a_missing_file_or_folder_names_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"expected folder {tmp_path / 'RACE/test/middle'}; layout:")):
        tasks.load_examples("race", "test", tmp_path)
    with pytest.raises(DataError, match=re.escape(f"expected {tmp_path / 'QNLI/dev.tsv'}; layout:")):
        tasks.load_examples("qnli", "validation", tmp_path)


# --- TFDS --------------------------------------------------------------------------------------

class DataErrorsTinyCorpus(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, text in enumerate(["one", "two"]):
            yield i, {"text": text}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    DataErrorsTinyCorpus(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_name_split_and_unprepared_dataset_are_one_data_error_saying_where(tfds_dir, tmp_path):
    assert len(tfds_source.open_split("data_errors_tiny_corpus", "train", str(tfds_dir))) == 2
    with pytest.raises(DataError, match=r"'no_such_corpus': TFDS knows no such dataset \(looked in "):
        tfds_source.open_split("no_such_corpus", "train", str(tmp_path))
    with pytest.raises(DataError, match=r"has no split 'validation'; its splits: train"):
        corpus.TfdsCorpus("data_errors_tiny_corpus", split="validation", data_dir=str(tfds_dir))
    # A registered dataset that was never prepared: no download, the directory it looked in.
    empty = tmp_path / "empty"
    with pytest.raises(DataError, match=f"not prepared in {re.escape(str(empty))}/lm1b/.*nothing is downloaded"):
        corpus.TfdsCorpus("lm1b", split="train", data_dir=str(empty))
    assert not any(p.name == "downloads" for p in empty.rglob("*"))


def test_a_gs_tfds_data_dir_is_refused_at_once():
    started = time.monotonic()
    with pytest.raises(DataError, match="gs://bucket/tfds: TFDS data must be on a local disk"):
        corpus.TfdsCorpus("lm1b", split="train", data_dir="gs://bucket/tfds")
    assert time.monotonic() - started < 5


@pytest.mark.slow  # a job's start-up: 15-20 s on a busy 2-core machine
def test_a_job_on_a_missing_tfds_dataset_is_one_error_line(tmp_path):
    workdir = tmp_path / "run"
    result = jobs.run(jobs.argv("configs/tiny.py", workdir, "--config.data.tfds_name=no_such_corpus",
                                f"--config.data.tfds_data_dir={tmp_path / 'tfds'}",
                                f"--config.data.cache_dir={tmp_path / 'cache'}"),
                      expect_ok=False, timeout=300)
    report = jobs.output(result)
    assert result.returncode == 1, report
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: TFDS dataset 'no_such_corpus': TFDS knows no such dataset (looked in "
                      f"{tmp_path / 'tfds'} and among the registered builders)"], report
    assert "Traceback" not in result.stderr, report


@pytest.mark.slow  # a job's start-up: 15-20 s on a busy 2-core machine
def test_a_fine_tuning_job_on_a_malformed_tsv_is_one_error_line(tmp_path):
    path = write(tmp_path / "glue/SST-2/train.tsv", SST2_HEADER + "good\tpositive-ish\n")
    write(tmp_path / "glue/SST-2/dev.tsv", SST2_HEADER + "bad\t0\n")
    result = jobs.run(jobs.argv("configs/finetune.py:sst2", tmp_path / "run", *jobs.TINY_MODEL,
                                f"--config.data.data_dir={tmp_path / 'glue'}"),
                      expect_ok=False, timeout=300)
    report = jobs.output(result)
    assert result.returncode == 1, report
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path}:2: label 'positive-ish' is none of negative, positive or 0..1"], report
    assert "Traceback" not in result.stderr, report



def test_a_max_len_beyond_the_context_is_refused_before_reading(tmp_path):
    from gpt1_jax.data import task_data
    from gpt1_jax.errors import ConfigError
    with pytest.raises(ConfigError, match="finetune.max_len=80 exceeds the model's context n_ctx=64"):
        task_data.load_task_data("sst2", tokenizer=None, n_ctx=64, data_dir=str(tmp_path), max_len=80)
