"""A small local harness task set built from a bundled book: a LAMBADA-style last word, a
multiple choice, rolling perplexity over pages, and generation that stops at a period.

`write(directory, n)` writes each task's JSONL and YAML (absolute data paths) and returns
the task names; pass `directory` as the harness's include path."""
import json
import pathlib
import re

from gpt1_jax import assets

TASKS = ("local_lastword", "local_choice", "local_rolling", "local_generate")


def book_text(num_chars: int) -> str:
    """A stretch of a bundled book from a third of the way in, its whitespace runs made single spaces."""
    text = assets.book_files()[0].read_text(encoding="utf-8")
    return re.sub(r"\s+", " ", text[len(text) // 3:len(text) // 3 + 2 * num_chars])[:num_chars]


def _sentences(n: int) -> list[str]:
    text = book_text(200_000)
    found = [s.strip() for s in re.findall(r"[^.!?]+[.]", text)]
    return [s for s in found if 6 <= len(s.split()) <= 30][:n]


def _yaml(name: str, data_file: pathlib.Path, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data_file}\n"
            f"test_split: test\n{body}")


def write(directory, n: int = 20) -> list[str]:
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sentences = _sentences(3 * n + 1)
    docs = {
        "local_lastword": [{"context": s.rsplit(" ", 1)[0], "last": s.rsplit(" ", 1)[1]} for s in sentences[:n]],
        "local_choice": [{"query": " ".join(s.split()[:4]),
                          "choices": [" ".join(s.split()[4:]), " ".join(o.split()[4:])], "gold": 0}
                         for s, o in zip(sentences[n:2 * n], sentences[n + 1:2 * n + 1])],
        "local_rolling": [{"page": " ".join(sentences[i:i + 6])} for i in range(0, min(3 * n, 6 * (n // 3)), 6)],
        "local_generate": [{"prompt": " ".join(s.split()[:5]), "answer": " ".join(s.split()[5:])}
                           for s in sentences[2 * n:3 * n]],
    }
    bodies = {
        "local_lastword": "output_type: loglikelihood\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{last}}'\n"
                          "metric_list:\n  - metric: acc\n  - metric: perplexity\n",
        "local_choice": "output_type: multiple_choice\ndoc_to_text: '{{query}}'\ndoc_to_choice: '{{choices}}'\n"
                        "doc_to_target: '{{gold}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        "local_rolling": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{page}}'\n"
                         "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
                         "  - metric: bits_per_byte\n",
        "local_generate": "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
                          "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 12\n  do_sample: false\n"
                          "metric_list:\n  - metric: exact_match\n",
    }
    for name in TASKS:
        data_file = directory / f"{name}.jsonl"
        data_file.write_text("".join(json.dumps(d) + "\n" for d in docs[name]), encoding="utf-8")
        (directory / f"{name}.yaml").write_text(_yaml(name, data_file, bodies[name]), encoding="utf-8")
    return list(TASKS)
