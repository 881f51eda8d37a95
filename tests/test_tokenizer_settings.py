"""A workdir's tokenizer is kept only with the settings it was built from: a run that failed
before committing a checkpoint leaves one that the next run rebuilds when the settings
changed; once checkpoints were trained with it, other settings are one clear error."""
import json

import pytest

from gpt1_jax import tokenizers
from gpt1_jax.data import corpus as corpus_lib
from gpt1_jax.data import prepare
from gpt1_jax.errors import ConfigError
from gpt1_jax.storage import rundir


@pytest.fixture(scope="module")
def source(corpus):
    return corpus_lib.TextFilesCorpus([corpus / "book.txt"])


def recorded(workdir) -> dict:
    return json.loads((workdir / rundir.TOKENIZER / rundir.TOKENIZER_SETTINGS).read_text())


def commit_a_checkpoint(workdir, step: int = 3) -> None:
    # A local step folder without orbax's temporary suffix is a finished step.
    (workdir / rundir.CHECKPOINTS / str(step)).mkdir(parents=True)


def test_the_same_settings_keep_the_recorded_tokenizer(source, tmp_path):
    first = prepare.prepare_tokenizer(tmp_path, source, "sentencepiece", 300)
    config_file = tmp_path / rundir.TOKENIZER / rundir.TOKENIZER_CONFIG
    written = config_file.stat().st_mtime_ns
    again = prepare.prepare_tokenizer(tmp_path, source, "sentencepiece", 300)
    assert again.fingerprint() == first.fingerprint() and again.vocab_size == 300
    assert config_file.stat().st_mtime_ns == written  # loaded, not rebuilt
    assert recorded(tmp_path) == {"tokenizer": "sentencepiece", "sentencepiece_vocab_size": 300}


def test_a_failed_runs_tokenizer_is_rebuilt_with_new_settings(source, tmp_path):
    prepare.prepare_tokenizer(tmp_path, source, "sentencepiece", 300)  # the run then failed
    rebuilt = prepare.prepare_tokenizer(tmp_path, source, "sentencepiece", 320)
    assert rebuilt.vocab_size == 320
    assert tokenizers.load_tokenizer(tmp_path / rundir.TOKENIZER).vocab_size == 320
    assert recorded(tmp_path)["sentencepiece_vocab_size"] == 320
    switched = prepare.prepare_tokenizer(tmp_path, source, "gpt1_bpe", 0)
    assert switched.kind == "gpt1_bpe" and recorded(tmp_path) == {"tokenizer": "gpt1_bpe"}


@pytest.mark.parametrize("kind, vocab_size, changed", [("sentencepiece", 320, "sentencepiece_vocab_size=320"),
                                                        ("gpt1_bpe", 300, "tokenizer='gpt1_bpe'")])
def test_other_settings_after_a_checkpoint_are_one_error_naming_why(source, tmp_path, kind, vocab_size, changed):
    prepare.prepare_tokenizer(tmp_path, source, "sentencepiece", 300)
    commit_a_checkpoint(tmp_path)
    with pytest.raises(ConfigError) as refused:
        prepare.prepare_tokenizer(tmp_path, source, kind, vocab_size)
    message = str(refused.value)
    assert "\n" not in message
    assert "sentencepiece_vocab_size=300" in message and f"data.{changed}" in message
    assert "checkpoints (steps 3)" in message and "use a new workdir" in message
    # The recorded tokenizer is untouched: the checkpoints still resume with it.
    assert tokenizers.load_tokenizer(tmp_path / rundir.TOKENIZER).vocab_size == 300
    assert prepare.prepare_tokenizer(tmp_path, source, "sentencepiece", 300).vocab_size == 300


def test_a_workdir_from_before_settings_were_recorded_is_judged_by_its_tokenizer(source, tmp_path):
    prepare.prepare_tokenizer(tmp_path, source, "sentencepiece", 300)
    (tmp_path / rundir.TOKENIZER / rundir.TOKENIZER_SETTINGS).unlink()
    commit_a_checkpoint(tmp_path)
    assert prepare.prepare_tokenizer(tmp_path, source, "sentencepiece", 300).vocab_size == 300
    with pytest.raises(ConfigError, match="sentencepiece_vocab_size=300"):
        prepare.prepare_tokenizer(tmp_path, source, "sentencepiece", 512)


def test_an_unknown_tokenizer_kind_names_the_key(source, tmp_path):
    with pytest.raises(ConfigError, match="data.tokenizer='wordpiece'"):
        prepare.prepare_tokenizer(tmp_path, source, "wordpiece", 0)
    assert not (tmp_path / rundir.TOKENIZER).exists()
