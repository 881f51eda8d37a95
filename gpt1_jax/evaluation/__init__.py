"""Evaluation: fine-tuned task metrics, perplexity of documents, the zero-shot evaluators, lm-evaluation-harness."""
