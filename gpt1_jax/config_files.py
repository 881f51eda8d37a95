"""A config file's `get_config(*args)`, loaded by path as `--config=PATH[:ARGS]` loads it.

configs/ is a folder of files, not a package, so a config that builds on another
(demo.py and the GPT-2 layouts on gpt1.py) loads its sibling through this, and works
from any working directory.
"""
import importlib.util
import pathlib


def load(path, *args):
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"gpt1_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)
