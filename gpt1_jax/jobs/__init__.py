"""Jobs: each composes library parts into one run (pre-training, fine-tuning, evaluation).
Only entry points import a job."""
