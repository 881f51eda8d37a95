"""Task heads on GPT-1 and their losses (GPT-1 §3.2-3.3).

Every example is S token sequences (see `data/task_data.py`): S = 1 for classification
and entailment, 2 for similarity, k for multiple choice. The Transformer reads all B*S
sequences; the hidden state at each sequence's classify token feeds a linear head W_y:

    classification / entailment   logits_BxC   = W_y h
    similarity                    logits_BxC   = W_y (h_AB + h_BA)     (regression: C = 1)
    multiple choice               scores_BxS   = W_y h_k, softmax over the k answers

and the objective is L3 = L2 (task) + λ L1 (the auxiliary LM loss on the same tokens).
"""
import flax.linen as nn
import jax.numpy as jnp
import optax

from gpt1_jax import model as model_lib


class TaskModel(nn.Module):
    """GPT-1 (`transformer`) plus the linear head `clf` on the classify-token state."""
    config: model_lib.ModelConfig
    target: str            # "classification" | "regression" | "multiple_choice"
    num_outputs: int       # classes; 1 for regression and multiple choice
    sum_sequences: bool    # similarity: add the two orders' states before the head
    clf_pdrop: float = 0.1

    @nn.compact
    def __call__(self, tokens_BxSxL, classify_pos_BxS, *, deterministic: bool = True,
                 with_lm: bool = True):
        b, s, l = tokens_BxSxL.shape
        lm_logits_NxLxV, hidden_NxLxD = model_lib.GPT1(self.config, name="transformer")(
            tokens_BxSxL.reshape(b * s, l), deterministic=deterministic, with_logits=with_lm)
        pooled_NxD = jnp.take_along_axis(
            hidden_NxLxD, classify_pos_BxS.reshape(b * s, 1, 1), axis=1)[:, 0]
        pooled_BxSxD = pooled_NxD.reshape(b, s, -1)
        # One dropout mask shared by an example's S sequences, as in the released code.
        pooled_BxSxD = nn.Dropout(self.clf_pdrop, broadcast_dims=(1,))(
            pooled_BxSxD, deterministic=deterministic)
        if self.sum_sequences:
            pooled_BxSxD = pooled_BxSxD.sum(axis=1, keepdims=True)
        head = nn.Dense(
            self.num_outputs, dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(self.config.init_std),
                                                     ("embed", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
            name="clf")
        out_BxSxC = head(pooled_BxSxD.astype(jnp.float32))
        if self.target == "multiple_choice":
            out = out_BxSxC[..., 0]                 # scores_BxS
        elif self.target == "regression":
            out = out_BxSxC[:, 0, 0]                # predictions_B
        else:
            out = out_BxSxC[:, 0]                   # logits_BxC
        return out, lm_logits_NxLxV


def init_params_fn(model: TaskModel, s: int = 1, max_len: int = 1):
    """`init(rng) -> boxed params` (with logical axis names) of a task model; the shapes do not
    depend on the number of sequences `s` or their length `max_len`."""
    def init(rng):
        return model.init(rng, jnp.zeros((1, s, max_len), jnp.int32), jnp.zeros((1, s), jnp.int32))["params"]
    return init


def task_model(spec, mcfg: model_lib.ModelConfig, clf_pdrop: float) -> TaskModel:
    num_outputs = spec.num_labels if spec.target == "classification" else 1
    return TaskModel(mcfg, spec.target, num_outputs, spec.kind == "similarity", clf_pdrop)


def task_loss_fn(model: TaskModel, lm_coef: float):
    """L3 = task loss + lm_coef * auxiliary LM loss; aux metrics: both parts, accuracy."""
    def loss_fn(params, batch, rng, deterministic):
        rngs = None if deterministic else {"dropout": rng}
        out, lm_logits_NxLxV = model.apply(
            {"params": params}, batch["tokens"], batch["classify_pos"],
            deterministic=deterministic, with_lm=lm_coef > 0, rngs=rngs)
        labels = batch["label"]
        if model.target == "regression":
            task_loss = jnp.mean((out - labels) ** 2)
            aux = {}
        else:
            task_loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, labels))
            aux = {"accuracy": jnp.mean(jnp.argmax(out, -1) == labels)}
        aux["task_loss"] = task_loss
        if lm_coef <= 0:
            return task_loss, aux
        b, s, l = batch["tokens"].shape
        tokens_NxL = batch["tokens"].reshape(b * s, l)
        mask_NxL = batch["mask"].reshape(b * s, l)
        losses_NxT = optax.softmax_cross_entropy_with_integer_labels(
            lm_logits_NxLxV[:, :-1], tokens_NxL[:, 1:])
        # Per-sequence mean over real tokens, then the batch mean (as the released code).
        mask_NxT = mask_NxL[:, 1:]
        lm_loss = jnp.mean((losses_NxT * mask_NxT).sum(1) / jnp.maximum(mask_NxT.sum(1), 1.0))
        aux["lm_loss"] = lm_loss
        return task_loss + lm_coef * lm_loss, aux
    return loss_fn


