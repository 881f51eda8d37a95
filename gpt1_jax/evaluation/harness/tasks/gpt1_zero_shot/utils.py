"""Data and metrics of the paper's zero-shot heuristics (GPT-1 §5, Figure 2) as harness tasks.

Each task reads the same examples as `python -m gpt1_jax.cli.zero_shot` (gpt1_jax/evaluation/zero_shot.py
`load_zero_shot_data`: the same files, `max_examples` subset and seed) and scores them the same
way: by the MEAN log-probability per token of a continuation, where the harness's built-in
metrics use the sum. A mean needs each continuation's token count under the evaluated model's
tokenizer, so the loader counts them, splitting context and continuation exactly as the
harness's causal backends do, and stores the counts in the documents.

Task metadata (`--metadata='{"glue_dir": ...}'`, or set by `python -m gpt1_jax.cli.harness`):
  glue_dir, story_cloze_dir   data directories (else $GPT1_JAX_GLUE_DIR, $GPT1_JAX_STORY_CLOZE_DIR)
  race_dir                    the directory holding RACE/test/{middle,high}/ (else $GPT1_JAX_RACE_DIR)
  dprd_file                   the DPRD (Rahman & Ng 2012) test file (else $GPT1_JAX_DPRD_FILE)
  tokenizer                   a gpt1_jax tokenizer directory or an HF tokenizer; else the
                              model's own: `init_from` (gpt1_jax) or `pretrained` (hf)
  max_examples, seed          as the zero-shot command's --max_examples (0: all) and its seed
"""
import json
import os

import datasets
import numpy as np

from gpt1_jax import loading, metrics, tokenizers
from gpt1_jax.errors import ConfigError, DataError
from gpt1_jax.evaluation import zero_shot
from gpt1_jax.storage import rundir

ENV = {"glue_dir": "GPT1_JAX_GLUE_DIR", "story_cloze_dir": "GPT1_JAX_STORY_CLOZE_DIR",
       "race_dir": "GPT1_JAX_RACE_DIR", "dprd_file": "GPT1_JAX_DPRD_FILE"}


def _data_dir(metadata: dict, key: str, needs: str, is_file: bool = False) -> str:
    """The directory (or with `is_file` the file) named by task metadata `key` or its variable."""
    where = metadata.get(key) or os.environ.get(ENV[key])
    what, placeholder = ("file", "FILE") if is_file else ("directory", "DIR")
    if not where:
        raise DataError(f"this task reads {needs} from local files and nothing may be downloaded: give "
                        f"its {what} as task metadata {key!r} (--metadata='{{\"{key}\": {placeholder}}}') "
                        f"or ${ENV[key]}")
    path = rundir.path(where)
    if not (path.is_file() if is_file else path.is_dir()):
        raise DataError(f"{key}={where}: no such {what} (it holds {needs})")
    return where


def _encoder(metadata: dict):
    """text -> ids with the evaluated model's tokenizer."""
    where = metadata.get("tokenizer") or metadata.get("init_from") or metadata.get("pretrained")
    if not where:
        raise ConfigError("the zero-shot tasks score mean log-probabilities per token and need the "
                          "model's tokenizer: give task metadata 'tokenizer' (a directory)")
    config = rundir.path(where) / tokenizers.CONFIG_FILE
    if config.exists() and "kind" in json.loads(config.read_text()):
        return tokenizers.load_tokenizer(where).encode
    if metadata.get("init_from") == where:
        return loading.load_tokenizer(loading.find(where)).encode
    import transformers
    hf = transformers.AutoTokenizer.from_pretrained(str(where))
    return lambda text: hf.encode(text, add_special_tokens=False)


def _continuation_tokens(encode, context: str, continuation: str) -> int:
    """How many tokens the harness scores for `continuation` after `context` (TemplateLM._encode_pair)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    return len(encode(context + continuation)) - len(encode(context))


def _take(metadata: dict, **dirs) -> zero_shot.ZeroShotData:
    return zero_shot.load_zero_shot_data(**dirs, max_examples=int(metadata.get("max_examples", 0)),
                                         seed=int(metadata.get("seed", 0)))


def sst2(**metadata) -> datasets.DatasetDict:
    """SST-2 validation: is "positive" or "negative" likelier after `sentence + " very"`?"""
    data = _take(metadata, glue_dir=_data_dir(metadata, "glue_dir", "GLUE's SST-2/ (dev.tsv)"))
    encode = _encoder(metadata)
    docs = []
    for e in data.sst2_dev:
        context = e.texts[0].rstrip() + " very"
        choices = ["negative", "positive"]
        docs.append({"context": context, "choices": choices, "label": int(e.label),
                     "num_tokens": [_continuation_tokens(encode, context, " " + c) for c in choices]})
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(docs)})


def story_cloze(**metadata) -> datasets.DatasetDict:
    """Story Cloze test: the ending with the higher mean log-probability given the story."""
    directory = _data_dir(metadata, "story_cloze_dir", "the Story Cloze spring-2016 CSV files")
    data = _take(metadata, story_cloze_dir=directory)
    return _choices_after_a_context(data.story_cloze, _encoder(metadata))


def race(**metadata) -> datasets.DatasetDict:
    """RACE test (middle and high): the answer with the higher mean log-probability given
    article + question."""
    directory = _data_dir(metadata, "race_dir", "RACE/test/{middle,high}/*.txt")
    data = _take(metadata, race_dir=directory)
    return _choices_after_a_context(data.race, _encoder(metadata))


def _choices_after_a_context(examples, encode) -> datasets.DatasetDict:
    """Multiple-choice examples (texts = context, choice, choice, ...) as harness documents."""
    docs = [{"context": e.texts[0], "choices": list(e.texts[1:]), "label": int(e.label),
             "num_tokens": [_continuation_tokens(encode, e.texts[0], " " + c) for c in e.texts[1:]]}
            for e in examples]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def dprd(**metadata) -> datasets.DatasetDict:
    """DPRD (Winograd): each candidate substituted for the pronoun gives a context; the one
    after which the rest of the sentence has the higher mean log-probability wins (partial
    scoring, `zero_shot.dprd_predictions`). One context per choice: the harness's "multiple
    input" form (doc_to_text is the label, doc_to_choice the contexts, doc_to_target the rest)."""
    path = _data_dir(metadata, "dprd_file", "the DPRD (Rahman & Ng 2012) sentences", is_file=True)
    data = _take(metadata, dprd_file=path)
    encode = _encoder(metadata)
    docs = []
    for e in data.dprd:
        contexts = [" ".join(e.words[:e.pronoun_index] + (candidate,)) for candidate in e.candidates]
        rest = " ".join(e.words[e.pronoun_index + 1:])
        docs.append({"contexts": contexts, "rest": rest, "label": int(e.answer),
                     "num_tokens": [_continuation_tokens(encode, c, " " + rest) for c in contexts]})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def mean_logprob_accuracy(doc: dict, results: list) -> dict:
    """1 if the choice with the highest mean log-probability per token is the label."""
    logprobs = np.array([logprob for logprob, _ in results])
    return {"acc_token_mean": float(np.argmax(logprobs / np.array(doc["num_tokens"])) == doc["label"])}


def cola(**metadata) -> datasets.DatasetDict:
    """CoLA: train sentences (to choose the threshold) then dev sentences, in one split."""
    data = _take(metadata, glue_dir=_data_dir(metadata, "glue_dir", "GLUE's CoLA/ (train.tsv, dev.tsv)"))
    encode = _encoder(metadata)
    docs = []
    for is_train, examples in ((True, data.cola_train), (False, data.cola_dev)):
        for e in examples:
            first, _, rest = e.texts[0].strip().partition(" ")
            # The space is the continuation's: the harness splits there, and its loglikelihood
            # tasks put nothing between context and continuation (target_delimiter "").
            docs.append({"context": first, "rest": " " + rest, "label": int(e.label), "is_train": is_train,
                         "num_tokens": max(1, len(encode(e.texts[0])) - 1)})
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(docs)})


def cola_score(doc: dict, results: list) -> dict:
    """The sentence's mean log-probability per token after its first word."""
    (logprob, _), = results
    return {"mcc": (logprob / doc["num_tokens"], doc["label"], doc["is_train"])}


def cola_mcc(items) -> float:
    """MCC on the dev sentences at the threshold with the best MCC on the train sentences."""
    scores, labels, is_train = (np.array(column) for column in zip(*items))
    train = is_train.astype(bool)
    threshold = zero_shot.best_threshold(scores[train], labels[train])
    return metrics.matthews_corrcoef(labels[~train], (scores[~train] > threshold).astype(int))


