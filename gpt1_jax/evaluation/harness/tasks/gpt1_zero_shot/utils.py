"""Data and metrics of the paper's zero-shot heuristics (GPT-1 §5, Figure 2) as harness tasks.

Each task reads the same examples as `python -m gpt1_jax.cli.zero_shot` (gpt1_jax/evaluation/zero_shot.py
`load_zero_shot_data`: the same files, `max_examples` subset and seed) and scores them the same
way: by the MEAN log-probability per token of a continuation, where the harness's built-in
metrics use the sum. A mean needs each continuation's token count under the evaluated model's
tokenizer, so the loader counts them, splitting context and continuation exactly as the
harness's causal backends do, and stores the counts in the documents.

Task metadata (`--metadata='{"glue_dir": ...}'`, or set by `python -m gpt1_jax.cli.harness`):
  glue_dir, story_cloze_dir   data directories (else $GPT1_JAX_GLUE_DIR, $GPT1_JAX_STORY_CLOZE_DIR)
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

ENV = {"glue_dir": "GPT1_JAX_GLUE_DIR", "story_cloze_dir": "GPT1_JAX_STORY_CLOZE_DIR"}


def _data_dir(metadata: dict, key: str, needs: str) -> str:
    directory = metadata.get(key) or os.environ.get(ENV[key])
    if not directory:
        raise DataError(f"this task reads {needs} from local files and nothing may be downloaded: give "
                        f"its directory as task metadata {key!r} (--metadata='{{\"{key}\": DIR}}') "
                        f"or ${ENV[key]}")
    if not rundir.path(directory).is_dir():
        raise DataError(f"{key}={directory}: no such directory (it holds {needs})")
    return directory


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
    encode = _encoder(metadata)
    docs = [{"context": e.texts[0], "choices": list(e.texts[1:]), "label": int(e.label),
             "num_tokens": [_continuation_tokens(encode, e.texts[0], " " + c) for c in e.texts[1:]]}
            for e in data.story_cloze]
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


