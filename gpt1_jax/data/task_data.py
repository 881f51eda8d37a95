"""Fine-tuning examples into model inputs: tokenize, transform, pack, batch.

Arrays of a split: `tokens` int32 [N, S, L], `mask` float32 [N, S, L] (1 on real tokens),
`classify_pos` int32 [N, S] (first classify token), `label` [N] (int32 class/answer id,
-1 when unlabelled; float32 score for regression, NaN when unlabelled).
"""
import dataclasses
import functools

import grain
import numpy as np

from gpt1_jax.data import corpus, transforms
from gpt1_jax.data import tasks as tasks_lib
from gpt1_jax.errors import ConfigError, DataError


def transform_example(spec: tasks_lib.TaskSpec, texts_ids: list[list[int]],
                      specials: transforms.SpecialIds, n_ctx: int) -> list[list[int]]:
    """The paper's input transformation of one tokenized example: its S sequences."""
    if spec.kind == "classification":
        return [transforms.classification(texts_ids[0], specials, n_ctx)]
    if spec.kind == "entailment":
        return [transforms.entailment(texts_ids[0], texts_ids[1], specials, n_ctx)]
    if spec.kind == "similarity":
        return list(transforms.similarity(texts_ids[0], texts_ids[1], specials, n_ctx))
    if spec.kind == "multiple_choice":
        max_part = transforms.original_story_cloze_part_len(n_ctx) if spec.name == "story_cloze" else None
        return transforms.multiple_choice(texts_ids[0], texts_ids[1:], specials, n_ctx, max_part)
    raise DataError(f"task {spec.name!r} has unknown kind {spec.kind!r}")


def encode_examples(spec, examples, tokenizer, n_ctx: int, progress: bool = False) -> list[list[list[int]]]:
    """Each example's S transformed token sequences."""
    specials = transforms.SpecialIds.appended_to(tokenizer.vocab_size)
    flat = [text for example in examples for text in example.texts]
    ids = tokenizer.encode_batch(flat, progress=progress)
    out, i = [], 0
    for example in examples:
        k = len(example.texts)
        out.append(transform_example(spec, ids[i:i + k], specials, n_ctx))
        i += k
    return out


def to_arrays(spec, sequences, examples, tokenizer, max_len: int) -> dict[str, np.ndarray]:
    """Packs transformed examples into `tokens` [N,S,L], `mask` [N,S,L], `classify_pos` [N,S],
    `label` [N] (-1 / NaN where a split has no labels)."""
    specials = transforms.SpecialIds.appended_to(tokenizer.vocab_size)
    s = len(sequences[0])
    flat = [seq for example_seqs in sequences for seq in example_seqs]
    tokens, mask, pos = transforms.pack(flat, specials, max_len)
    n = len(sequences)
    if spec.target == "regression":
        labels = np.array([np.nan if e.label is None else e.label for e in examples], np.float32)
    else:
        labels = np.array([-1 if e.label is None else e.label for e in examples], np.int32)
    return {"tokens": tokens.reshape(n, s, max_len), "mask": mask.reshape(n, s, max_len),
            "classify_pos": pos.reshape(n, s), "label": labels}


def subset(examples: list, limit: int, seed: int) -> list:
    """A seeded random subset of `limit` examples (all when limit <= 0)."""
    if limit <= 0 or limit >= len(examples):
        return examples
    order = np.random.RandomState(seed).permutation(len(examples))[:limit]
    return [examples[i] for i in sorted(order)]


def _take_rows(arrays: dict, rows: slice, ids_B: np.ndarray) -> dict:
    ids = ids_B[rows]
    return {k: v[ids] for k, v in arrays.items()}


def make_batches(arrays: dict, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
    """Endless shuffled batches (reshuffled every epoch) of this process's rows, as a grain
    iterator with checkpointable state; the global batch is the same for any process count."""
    local = batch_size // process_count
    rows = slice(process_index * local, (process_index + 1) * local)
    n = len(arrays["label"])
    ids = grain.MapDataset.range(n).shuffle(seed=seed).repeat(corpus.endless_epochs(n)).batch(batch_size)
    batches = ids.map(functools.partial(_take_rows, arrays, rows))
    return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))



@dataclasses.dataclass
class TaskData:
    """A task's packed splits: `train` (None in eval-only jobs) and each evaluation split."""
    spec: tasks_lib.TaskSpec
    train: dict | None
    evals: dict[str, dict]          # split -> arrays
    eval_examples: dict[str, list]  # split -> examples (their uids name the predictions)
    max_len: int


def load_task_data(task_name: str, tokenizer, n_ctx: int, *, data_dir: str | None,
                   source: str = "files", with_train: bool = True, max_train_examples: int = 0,
                   max_eval_examples: int = 0, seed: int = 0, max_len: int = 0) -> TaskData:
    """Reads, tokenizes, transforms and packs the task's training and evaluation splits.

    Sequences are padded to `max_len`, or (0) to the longest one rounded up to a multiple
    of 8, never beyond n_ctx.
    """
    spec = tasks_lib.get_task(task_name)
    if max_len > n_ctx:
        raise ConfigError(f"finetune.max_len={max_len} exceeds the model's context n_ctx={n_ctx}")
    splits = (["train"] if with_train else []) + list(spec.eval_splits)
    examples, sequences = {}, {}
    for split in splits:
        limit = max_train_examples if split == "train" else max_eval_examples
        examples[split] = subset(tasks_lib.load_examples(spec.name, split, data_dir or None, source),
                                 limit, seed)
        if not examples[split]:
            raise DataError(f"task {spec.name!r}: split {split!r} has no examples")
        sequences[split] = encode_examples(spec, examples[split], tokenizer, n_ctx)
    longest = max(len(seq) for split in splits for ex in sequences[split] for seq in ex)
    max_len = max_len or min(n_ctx, -(-longest // 8) * 8)
    arrays = {split: to_arrays(spec, sequences[split], examples[split], tokenizer, max_len)
              for split in splits}
    return TaskData(spec, arrays.get("train"), {s: arrays[s] for s in spec.eval_splits},
                    {s: examples[s] for s in spec.eval_splits}, max_len)
