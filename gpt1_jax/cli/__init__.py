"""Command lines: flags -> library calls (sampling, conversion, LM evaluation, zero-shot). Nothing imports them."""
