"""Zero-shot behaviour of a pretrained LM, tracked over pretraining (GPT-1 §5, Figure 2 right).

The language model alone, with no fine-tuning, scores each task through likelihoods:

  CoLA         mean token log-probability of the sentence; above a threshold -> acceptable
               (the threshold maximising MCC on a training subset); metric MCC
  SST-2        append "very" and compare the next-token probabilities of "positive" and
               "negative"; metric accuracy
  Story Cloze  the ending with the higher mean token log-probability given the story
  RACE         the answer with the higher mean token log-probability given article + question
  DPRD         substitute each candidate for the pronoun; the candidate whose continuation
               (the words after the pronoun) has the higher mean log-probability wins

The command line (gpt1_jax/cli/zero_shot.py) writes `<workdir>/zero_shot.json` and
`<workdir>/zero_shot.png` with one point per finished checkpoint.
"""
import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt1_jax import checkpoint as checkpoint_lib
from gpt1_jax import loading, metrics, plots, tokenizers
from gpt1_jax import model as model_lib
from gpt1_jax.data import tasks as tasks_lib
from gpt1_jax.errors import ConfigError
from gpt1_jax.storage import rundir

# The chance level of each task's metric, drawn as the baseline in the figure.
RANDOM_BASELINE = {"cola": 0.0, "sst2": 0.5, "story_cloze": 0.5, "race": 0.25, "dprd": 0.5}


# ---------------------------------------------------------------------------------------------
# Scoring token sequences with the LM
# ---------------------------------------------------------------------------------------------

class LMScorer:
    """Log-probabilities of token sequences under a GPT-1 LM, batched at fixed shapes."""

    def __init__(self, mcfg: model_lib.ModelConfig, params, batch_size: int = 32):
        self.n_ctx, self.batch_size = mcfg.n_ctx, batch_size
        model = model_lib.GPT1(mcfg)

        @jax.jit
        def logprobs(params, tokens_BxT):
            logits_BxTxV, _ = model.apply({"params": params}, tokens_BxT)
            logp_BxTxV = jax.nn.log_softmax(logits_BxTxV[:, :-1])
            return jnp.take_along_axis(logp_BxTxV, tokens_BxT[:, 1:, None], axis=-1)[..., 0]

        self._logprobs = logprobs
        self.params = params

    def token_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """For each sequence, log p(token_t | tokens_<t) for t = 1..len-1 (left-truncated to n_ctx)."""
        sequences = [list(s)[-self.n_ctx:] for s in sequences]
        length = max(len(s) for s in sequences)
        length = min(self.n_ctx, -(-length // 16) * 16)   # few distinct shapes, few compilations
        out = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start:start + self.batch_size]
            tokens = np.zeros((self.batch_size, length), np.int32)
            for row, s in enumerate(chunk):
                tokens[row, :len(s)] = s
            logp = np.asarray(self._logprobs(self.params, tokens))
            out.extend(logp[row, :len(s) - 1] for row, s in enumerate(chunk))
        return out

    def continuation_mean_logprob(self, contexts: Sequence[Sequence[int]],
                                  continuations: Sequence[Sequence[int]]) -> np.ndarray:
        """Mean log-probability of each continuation's tokens given its context."""
        full = [list(c) + list(x) for c, x in zip(contexts, continuations)]
        logps = self.token_logprobs(full)
        return np.array([lp[-len(x):].mean() if len(x) else -np.inf
                         for lp, x in zip(logps, continuations)])


# ---------------------------------------------------------------------------------------------
# The tasks
# ---------------------------------------------------------------------------------------------

def cola_scores(scorer: LMScorer, tokenizer, sentences: Sequence[str]) -> np.ndarray:
    """Mean token log-probability of each sentence (its first token is not scored)."""
    ids = tokenizer.encode_batch(list(sentences))
    return np.array([lp.mean() if len(lp) else 0.0 for lp in scorer.token_logprobs(ids)])


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold on scores (acceptable above it) with the highest MCC."""
    candidates = np.unique(scores)
    mccs = [metrics.matthews_corrcoef(labels, (scores > t).astype(int)) for t in candidates]
    return float(candidates[int(np.argmax(mccs))]) if len(candidates) else 0.0


def sst2_predictions(scorer: LMScorer, tokenizer, sentences: Sequence[str]) -> np.ndarray:
    """1 where "positive" is likelier than "negative" after `sentence + " very"`."""
    positive, negative = tokenizer.encode("positive"), tokenizer.encode("negative")
    contexts = tokenizer.encode_batch([s.rstrip() + " very" for s in sentences])
    pos = scorer.continuation_mean_logprob(contexts, [positive] * len(contexts))
    neg = scorer.continuation_mean_logprob(contexts, [negative] * len(contexts))
    return (pos > neg).astype(int)


def multiple_choice_predictions(scorer: LMScorer, tokenizer, examples) -> np.ndarray:
    """Index of the answer with the highest mean log-probability given the context."""
    contexts = tokenizer.encode_batch([e.texts[0] for e in examples])
    k = len(examples[0].texts) - 1
    answers = tokenizer.encode_batch([a for e in examples for a in e.texts[1:]])
    flat_contexts = [c for c in contexts for _ in range(k)]
    scores = scorer.continuation_mean_logprob(flat_contexts, answers).reshape(len(examples), k)
    return scores.argmax(-1)


@dataclasses.dataclass(frozen=True)
class WinogradExample:
    """A DPRD sentence with the pronoun at word index `pronoun_index`."""
    words: tuple[str, ...]
    pronoun_index: int
    candidates: tuple[str, str]
    answer: int


def read_dprd(path) -> list[WinogradExample]:
    """Rahman & Ng (2012) format: blocks of 4 lines (sentence, pronoun, "cand1,cand2",
    answer) separated by blank lines. The pronoun's first occurrence is substituted."""
    path = rundir.path(path)
    blocks = [b.strip().splitlines() for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    examples, line = [], 1
    for block in blocks:
        if len(block) != 4:
            raise ConfigError(f"{path}:{line}: a DPRD block has 4 lines, found {len(block)}")
        sentence, pronoun, candidates, answer = (x.strip() for x in block)
        words = tuple(sentence.split())
        candidates_pair = tuple(c.strip() for c in candidates.split(","))
        if pronoun not in words or len(candidates_pair) != 2 or answer not in candidates_pair:
            raise ConfigError(f"{path}:{line}: pronoun, candidates or answer do not fit the sentence")
        examples.append(WinogradExample(words, words.index(pronoun), candidates_pair,
                                        candidates_pair.index(answer)))
        line += len(block) + 1
    return examples


def dprd_predictions(scorer: LMScorer, tokenizer, examples: Sequence[WinogradExample]) -> np.ndarray:
    """Candidate whose substitution makes the rest of the sentence likelier (partial scoring)."""
    contexts, continuations = [], []
    for e in examples:
        rest = " ".join(e.words[e.pronoun_index + 1:])
        for candidate in e.candidates:
            contexts.append(tokenizer.encode(" ".join(e.words[:e.pronoun_index] + (candidate,))))
            continuations.append(tokenizer.encode(rest))
    scores = scorer.continuation_mean_logprob(contexts, continuations).reshape(len(examples), 2)
    return scores.argmax(-1)


# ---------------------------------------------------------------------------------------------
# Over a pretraining run
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ZeroShotData:
    cola_train: list = dataclasses.field(default_factory=list)
    cola_dev: list = dataclasses.field(default_factory=list)
    sst2_dev: list = dataclasses.field(default_factory=list)
    story_cloze: list = dataclasses.field(default_factory=list)
    race: list = dataclasses.field(default_factory=list)
    dprd: list = dataclasses.field(default_factory=list)

    def tasks(self) -> list[str]:
        """The tasks there is data to evaluate (CoLA needs its dev set; its train subset
        only sets the threshold)."""
        present = {"cola": self.cola_dev, "sst2": self.sst2_dev, "story_cloze": self.story_cloze,
                   "race": self.race, "dprd": self.dprd}
        return [task for task, examples in present.items() if examples]


def load_zero_shot_data(glue_dir=None, story_cloze_dir=None, race_dir=None, dprd_file=None,
                        max_examples: int = 0, seed: int = 0) -> ZeroShotData:
    """The evaluation sets that are available (each argument may be None)."""
    def take(examples):
        if not max_examples or len(examples) <= max_examples:
            return examples
        order = np.random.RandomState(seed).permutation(len(examples))[:max_examples]
        return [examples[i] for i in sorted(order)]
    data = ZeroShotData()
    if glue_dir:
        data.cola_train = take(tasks_lib.load_examples("cola", "train", glue_dir))
        data.cola_dev = take(tasks_lib.load_examples("cola", "validation", glue_dir))
        data.sst2_dev = take(tasks_lib.load_examples("sst2", "validation", glue_dir))
    if story_cloze_dir:
        data.story_cloze = take(tasks_lib.load_examples("story_cloze", "test", story_cloze_dir))
    if race_dir:
        data.race = take(tasks_lib.load_examples("race", "test", race_dir))
    if dprd_file:
        data.dprd = take(read_dprd(dprd_file))
    return data


def evaluate_checkpoint(scorer: LMScorer, tokenizer, data: ZeroShotData) -> dict[str, float]:
    """Every available zero-shot task's metric for one model."""
    results = {}
    if data.cola_dev:
        train_scores = cola_scores(scorer, tokenizer, [e.texts[0] for e in data.cola_train])
        threshold = best_threshold(train_scores, np.array([e.label for e in data.cola_train]))
        dev_scores = cola_scores(scorer, tokenizer, [e.texts[0] for e in data.cola_dev])
        results["cola"] = metrics.matthews_corrcoef(
            np.array([e.label for e in data.cola_dev]), (dev_scores > threshold).astype(int))
    if data.sst2_dev:
        predictions = sst2_predictions(scorer, tokenizer, [e.texts[0] for e in data.sst2_dev])
        results["sst2"] = metrics.accuracy(np.array([e.label for e in data.sst2_dev]), predictions)
    for name in ("story_cloze", "race"):
        examples = getattr(data, name)
        if examples:
            predictions = multiple_choice_predictions(scorer, tokenizer, examples)
            results[name] = metrics.accuracy(np.array([e.label for e in examples]), predictions)
    if data.dprd:
        predictions = dprd_predictions(scorer, tokenizer, data.dprd)
        results["dprd"] = metrics.accuracy(np.array([e.answer for e in data.dprd]), predictions)
    return results


def evaluate_run(workdir, data: ZeroShotData, batch_size: int = 32,
                 progress: Callable[[str], None] | None = print) -> dict:
    """Zero-shot metrics at every checkpoint of a pretraining workdir: {"steps": [...],
    "tasks": {task: [metric per step]}, "random": {...}}.

    The run may still be training: a step that its rotation deletes while it is read is
    skipped (and said so). ConfigError when there is no task data or no step to evaluate.
    """
    workdir = rundir.path(workdir)
    if not data.tasks():
        raise ConfigError("no zero-shot task data to evaluate (give the GLUE, Story Cloze, RACE or DPRD data)")
    steps = checkpoint_lib.finished_steps(workdir / rundir.CHECKPOINTS)
    if not steps:
        raise ConfigError(f"{workdir / rundir.CHECKPOINTS} holds no finished checkpoint")
    tokenizer = tokenizers.load_tokenizer(workdir / rundir.TOKENIZER)
    curves: dict[str, list[float]] = {}
    evaluated = []
    for step in steps:
        step_dir = workdir / rundir.CHECKPOINTS / str(step)
        try:
            loaded = loading.load(step_dir)
        except (checkpoint_lib.CheckpointError, OSError):
            if not checkpoint_lib.deleted_by_rotation(step_dir):
                raise
            if progress:
                progress(f"step {step}: deleted by the run's rotation while it was read; skipped")
            continue
        results = evaluate_checkpoint(LMScorer(loaded.config, loaded.params, batch_size), tokenizer, data)
        for task, value in results.items():
            curves.setdefault(task, []).append(value)
        evaluated.append(step)
        if progress:
            progress(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in results.items()))
    if not evaluated:
        raise ConfigError(f"every checkpoint of {workdir / rundir.CHECKPOINTS} was deleted while it was read")
    return {"steps": evaluated, "tasks": curves, "random": {t: RANDOM_BASELINE[t] for t in curves}}


def plot(results: dict) -> bytes:
    """Figure 2 (right): each task's zero-shot metric over pretraining updates."""
    plt = plots.pyplot()
    labels = {"cola": "CoLA (MCC)", "sst2": "SST-2 (acc)", "story_cloze": "Story Cloze (acc)",
              "race": "RACE (acc)", "dprd": "DPRD (acc)"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for task, values in results["tasks"].items():
        line, = ax.plot(results["steps"], values, marker="o", label=labels.get(task, task))
        ax.axhline(results["random"][task], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("pre-training updates")
    ax.set_ylabel("zero-shot metric (dotted: chance)")
    ax.set_title("Zero-shot behaviour over pre-training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plots.png_bytes(fig, dpi=120)

