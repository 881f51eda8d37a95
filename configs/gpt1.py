"""The paper's pre-training setup (GPT-1 §4.1), exactly.

12 layers, width 768, 12 heads, FFN 3072, 512-token windows, the original 40,478-entry
BPE vocabulary, batches of 64, Adam with peak lr 2.5e-4, 2,000 warm-up steps then
cosine annealing to 0, decoupled weight decay 0.01, gradient clipping at 1, dropout 0.1,
100 epochs over the corpus (the step count is computed from the corpus size).

    python -m gpt1_jax.cli.main --config=configs/gpt1.py --workdir=runs/gpt1
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "pretrain"
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        vocab_size=40478,      # must equal the tokenizer's vocabulary
        n_special=0,
        n_ctx=512,
        n_layer=12,
        n_head=12,
        d_model=768,
        d_ff=3072,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
        resid_pdrop=0.1,
        layer_norm_eps=1e-5,
        init_std=0.02,
        attention="einsum",    # or "dot_product" (jax.nn.dot_product_attention; needs attn_pdrop=0)
        attention_backend=ml_collections.FieldReference(None, field_type=str),
        attention_block=64,    # einsum: queries per block; keys after a block are never scored (0: one block)
        dtype="float32",       # compute dtype; "bfloat16" for mixed precision
        remat="none",          # "dots" (per block: keep matmul outputs) or "block" (keep block inputs only)
        scan_layers=False,     # True: one nn.scan over the blocks (params stacked on "layers");
                               # compiles in a fraction of the time
    ))

    config.data = ml_collections.ConfigDict(dict(
        tokenizer="gpt1_bpe",            # or "sentencepiece" (trained on the corpus)
        sentencepiece_vocab_size=8192,
        text_files="",                   # comma-separated paths or globs; "" = the bundled books
        unwrap_lines=True,               # join hard-wrapped lines within paragraphs (corpus.py)
        tfds_name="",                    # e.g. "lm1b": read through tfds.data_source instead of files
        tfds_split="train",
        tfds_text_key="text",
        tfds_data_dir="",
        cache_dir="",                    # token cache; "" = $GPT1_JAX_CACHE or ~/.cache/gpt1_jax
        val_fraction=0.01,
    ))

    config.train = ml_collections.ConfigDict(dict(
        batch_size=64,         # global: split over the data and fsdp mesh axes
        num_epochs=100,
        num_steps=0,           # > 0 overrides num_epochs
        stop_at_step=0,        # > 0: stop after this step, schedule unchanged (time-sliced jobs)
        microbatches=1,        # gradient accumulation
        log_every_steps=50,
        eval_every_steps=1000,
        eval_batches=20,
        max_nonfinite_in_a_row=10,
        grace_period_secs=25.0,      # after SIGTERM/SIGINT: commit a checkpoint, else exit 1 (0: no limit);
                                     # under GCE spot's 30 s notice, set with SLURM's --signal lead
        peak_flops_per_device=0.0,   # 0: look up the device kind (reporting.py)
        sample_prompt="It was a dark and stormy night, and",  # continued at the end of pre-training
        sample_tokens=64,            # tokens of each continuation (greedy, sampled); 0: none
        progress=True,
    ))

    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=2.5e-4,
        schedule="warmup_cosine",
        warmup_steps=2000,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.01,
        max_grad_norm=1.0,
    ))

    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Logical parameter axis -> mesh axes (see sharding.py). Strings joined by "+" name
    # several mesh axes, "" none.
    config.sharding_rules = ml_collections.ConfigDict(dict(
        batch="data+fsdp", vocab="tensor", embed="fsdp", heads="tensor", mlp="tensor",
        kv="", norm="", layers=""))

    config.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=1000,
        every_secs=0.0,        # > 0: also checkpoint when this long has passed (checked at log steps)
        max_to_keep=3,
        async_save=True,
    ))

    # Optional: Weights & Biases beside TensorBoard (pip install ".[wandb]"), process 0 only.
    config.tracking = ml_collections.ConfigDict(dict(
        wandb=False,
        wandb_project="gpt1-jax",
        wandb_entity="",
        wandb_mode="",             # "online", "offline", "disabled"; "" = WANDB_MODE or online
    ))

    # Optional, pre-training: lm-evaluation-harness tasks at every evaluation
    # (train.eval_every_steps), logged as val_harness/<task>/<metric> (pip install ".[harness]").
    config.harness = ml_collections.ConfigDict(dict(
        tasks="",                  # comma-separated harness task names; "" = off
        limit=0.0,                 # at most this many documents per task (< 1: a fraction; 0: all)
        batch_size=32,
        include_path="",           # comma-separated folders of more task YAMLs
    ))

    config.distributed = ml_collections.ConfigDict(dict(
        initialize=False,          # call jax.distributed.initialize (auto-detects TPU pods, SLURM)
        coordinator_address="",    # explicit "host:port" for other clusters
        num_processes=0,
        process_id=-1,
        local_device_ids="",       # "0,1,...": the devices this process drives (one task per node)
        heartbeat_timeout_secs=100,  # a process silent this long is taken for dead; all exit
    ))
    return config
