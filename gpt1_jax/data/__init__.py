"""Data: text corpora into token windows (corpus), fine-tuning tasks (tasks, transforms)."""
