"""The lm-evaluation-harness model `gpt1_jax`: any `init_from` this project loads, scored with
its own tokenizer by gpt1_jax/evaluation/harness/scoring.py.

    lm = GPT1LM(init_from="runs/demo", batch_size=32)
    lm_eval.simple_evaluate(model=lm, tasks=["gpt1_sst2"])

Requests are turned into token rows exactly as the harness's `hf` backend does (it is a
`TemplateLM`: the same context/continuation split, the same left truncation to the context,
the same rolling windows), so both backends on the same weights and token ids agree.
"""
import dataclasses
import logging

import jax
import lm_eval.models  # noqa: F401  (registers the harness's own backends beside this one)
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from gpt1_jax import generate as generate_lib
from gpt1_jax import heads, loading
from gpt1_jax import model as model_lib
from gpt1_jax.checkpoint import CheckpointError
from gpt1_jax.data import tasks as tasks_lib
from gpt1_jax.errors import ConfigError
from gpt1_jax.evaluation import harness
from gpt1_jax.evaluation.harness import scoring
from gpt1_jax.storage import rundir

log = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256   # the harness's default, as in its `hf` backend


def load_language_model(init_from) -> loading.LoadedModel:
    """`loading.load(init_from)` as a language model: a pre-training run or export as it is; a
    fine-tuned model (a fine-tuning run, checkpoint or export) as its body, see `fine_tuned_body`.
    CheckpointError for what cannot be scored as a language model (no tokenizer recorded)."""
    source = loading.find(init_from)
    if not rundir.has_tokenizer(source.tokenizer_dir):
        raise CheckpointError(f"{source.path} records no tokenizer ({source.tokenizer_dir} is missing): "
                              f"not a language model this project can read text with")
    if source.task is None:
        return loading.load(source)
    loaded = fine_tuned_body(source)
    print(f"gpt1_jax: evaluating the body of a model fine-tuned on {source.task!r} ({source.path}) as a "
          f"language model: its transformer and tied LM head over the tokenizer's "
          f"{loaded.config.vocab_size} tokens (the task head and the fine-tuning's special tokens dropped)")
    return loaded


def fine_tuned_body(source: loading.Pretrained) -> loading.LoadedModel:
    """The language model inside a fine-tuned model: the task model's `transformer` with the
    rows that fine-tuning appended to its token table (start, delimiter, classify: `n_special`,
    see jobs/finetune.py) dropped, so the tied head's logits cover exactly the vocabulary the
    tokenizer produces; the task head `clf` is read and dropped. On this process's first device."""
    config = loading.model_config(source)
    task_model = heads.task_model(tasks_lib.get_task(source.task), config, clf_pdrop=0.0)
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    loaded = loading.load(source, lambda config: model_lib.abstract_of(heads.init_params_fn(task_model), one_device))
    if loaded.tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{source.path} records vocab_size={config.vocab_size} but its tokenizer has "
                              f"{loaded.tokenizer.vocab_size} entries")
    body = dict(model_lib.per_layer_params(loaded.params["transformer"]))
    body["tokens_embed"] = {"embedding": body["tokens_embed"]["embedding"][:config.vocab_size]}
    lm_config = dataclasses.replace(config, n_special=0)
    return loading.LoadedModel(lm_config, body, loaded.tokenizer, source)


@register_model("gpt1_jax")
class GPT1LM(TemplateLM):
    """A harness LM over a loaded GPT-1: `init_from=` (a path, local or gs://) or `loaded=`."""

    def __init__(self, init_from=None, loaded: loading.LoadedModel | None = None, batch_size=32,
                 max_length=None, max_gen_toks=DEFAULT_MAX_GEN_TOKS, progress=True, **unused):
        super().__init__()
        if (init_from is None) == (loaded is None):
            raise ConfigError("gpt1_jax: give exactly one of init_from= and loaded=")
        self.loaded = loaded or load_language_model(init_from)
        self.tokenizer_ = self.loaded.tokenizer
        n_ctx = self.loaded.config.n_ctx
        self._max_length = int(max_length or n_ctx)
        if not 1 <= self._max_length <= n_ctx:
            raise ConfigError(f"max_length={self._max_length} exceeds the model's context of {n_ctx} tokens")
        self.max_gen_toks = int(max_gen_toks)
        # "auto" (the harness CLI's batch-size search) has no meaning here: shapes are bucketed.
        batch_size = 32 if str(batch_size).startswith("auto") else int(batch_size)
        self.scorer = scoring.Scorer(self.loaded.config, self.loaded.params, batch_size,
                                     progress=progress not in (False, "False", "false"))
        self._boundary = harness.boundary_token_id(self.tokenizer_)
        if unused:
            log.info("gpt1_jax ignores model arguments %s", sorted(unused))

    @property
    def eot_token_id(self) -> int:
        return self._boundary

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return f"gpt1_jax-{self.tokenizer_.kind}-{self.tokenizer_.fingerprint()[:16]}"

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tokenizer_.encode(string)

    def tok_decode(self, tokens) -> str:
        return self.tokenizer_.decode(tokens)

    def _row(self, context_enc: list[int], continuation_enc: list[int]) -> scoring.Row:
        if not continuation_enc:
            raise ConfigError("a request's continuation has no token to score")
        if len(continuation_enc) > self.max_length:
            raise ConfigError(f"a continuation of {len(continuation_enc)} tokens is longer than the "
                              f"context of {self.max_length} tokens")
        # As the harness's backends: keep the last max_length inputs (+ the last target).
        tokens = (context_enc + continuation_enc)[-(self.max_length + 1):]
        return scoring.Row(tuple(tokens), len(continuation_enc))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        rows = [self._row(context_enc, continuation_enc) for _, context_enc, continuation_enc in requests]
        results = self.scorer.score(rows, desc="loglikelihood")
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        rows, owners = [], []
        for index, (string,) in enumerate(request.args for request in requests):
            windows = lm_eval_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)
            for context_enc, continuation_enc in map(lm_eval_utils.make_disjoint_window, windows):
                rows.append(self._row(context_enc, continuation_enc))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self.scorer.score(rows, desc="loglikelihood_rolling")):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        by_kwargs: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            by_kwargs.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        out: list[str | None] = [None] * len(requests)
        end_of_text = self.tok_decode([self.eot_token_id])
        for indices in by_kwargs.values():
            kwargs = dict(requests[indices[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            if end_of_text and end_of_text not in until:
                until.append(end_of_text)
            max_gen_toks = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if max_gen_toks >= self.max_length:
                raise ConfigError(f"max_gen_toks={max_gen_toks} must be below the context of "
                                  f"{self.max_length} tokens")
            sampling = _sampling(kwargs)
            prompts = [self.tok_encode(requests[i].args[0]) or [self.prefix_token_id] for i in indices]
            new_tokens = self.scorer.generate(prompts, max_gen_toks, self.eot_token_id, sampling,
                                              seed=int(kwargs.get("seed", 0) or 0))
            for i, tokens in zip(indices, new_tokens):
                text = self.tok_decode(tokens)
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


def _sampling(kwargs: dict) -> generate_lib.Sampling:
    """Greedy unless the request samples (`do_sample`, or a temperature above 0)."""
    temperature = float(kwargs.get("temperature", 0.0) or 0.0)
    if not kwargs.get("do_sample", False) or temperature == 0.0:
        return generate_lib.GREEDY
    return generate_lib.Sampling(temperature=temperature, top_k=int(kwargs.get("top_k", 0) or 0),
                                 top_p=float(kwargs.get("top_p", 1.0) or 1.0))
