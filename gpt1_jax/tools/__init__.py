"""Tools: benchmarks, profiling and ahead-of-time compilation. Nothing in the library imports them."""
