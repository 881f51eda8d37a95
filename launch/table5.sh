#!/usr/bin/env bash
# The paper's Table 5 (ablations) in miniature, on CPU:
#   one demo-scale pre-training (2,200 steps of 16 x 128 tokens, ~25 minutes on 2 cores;
#   a sentencepiece vocabulary of 8,192 trained on the books, because at this scale the
#   40,478-word head would take most of the compute), then SST-2 and Story Cloze fine-tuning
#   with and without pre-training, with and without the auxiliary LM loss,
#   and the zero-shot curve over the pre-training's checkpoints (Figure 2, right).
#   The 400-step warm-up matters: with a 30-step one this post-LN model sits at the corpus's
#   unigram loss for thousands of steps (see README, "Zero-shot behaviour and the ablations").
#
#   Fine-tuning is the paper's recipe (lr 6.25e-5, batch 32, 3 epochs) on 4,000 SST-2
#   training sentences and the 1,497 Story Cloze training stories. Each ablation grid is a
#   grid study (launch/sweep.py over gpt1_jax/sweeps/): two fine-tunes at a time, and a rerun
#   after an interruption continues it (ROOT/sst2/_sweep/study.journal).
#
#   launch/table5.sh ROOT GLUE_DIR STORY_CLOZE_DIR
set -euo pipefail
root=${1:?usage: launch/table5.sh ROOT GLUE_DIR STORY_CLOZE_DIR}
glue=${2:?usage: launch/table5.sh ROOT GLUE_DIR STORY_CLOZE_DIR}
story=${3:?usage: launch/table5.sh ROOT GLUE_DIR STORY_CLOZE_DIR}
here=$(cd "$(dirname "$0")" && pwd)

python -m gpt1_jax.cli.main --config=configs/demo.py --workdir="$root/pretrain" \
    --config.data.tokenizer=sentencepiece --config.data.sentencepiece_vocab_size=8192 \
    --config.model.vocab_size=8192 --config.model.n_layer=4 --config.model.d_model=256 \
    --config.model.n_head=4 --config.model.d_ff=1024 --config.model.n_ctx=128 \
    --config.train.batch_size=16 --config.train.num_steps=2200 \
    --config.optimizer.learning_rate=1e-3 --config.optimizer.warmup_steps=400 \
    --config.train.eval_every_steps=200 --config.train.eval_batches=10 \
    --config.checkpoint.every_steps=400 --config.checkpoint.max_to_keep=10

python -m gpt1_jax.cli.zero_shot --workdir="$root/pretrain" --glue_dir="$glue" \
    --story_cloze_dir="$story" --max_examples=500

python "$here/sweep.py" --root="$root/sst2" --config=configs/finetune.py:sst2 --parallel=2 \
    --objective=eval.validation.accuracy --direction=maximize \
    --grid "finetune.load_pretrained_weights=True,False" --grid "finetune.lm_coef=0.5,0" \
    --set "init_from=$root/pretrain" --set "data.data_dir=$glue" --set data.max_train_examples=4000
python "$here/sweep.py" --root="$root/story_cloze" --config=configs/finetune.py:story_cloze --parallel=2 \
    --objective=eval.test.accuracy --direction=maximize \
    --grid "finetune.load_pretrained_weights=True,False" --grid "finetune.lm_coef=0.5,0" \
    --set "init_from=$root/pretrain" --set "data.data_dir=$story"
