"""Shadows the real llama_cpp on PYTHONPATH as a broken install does: its shared
library will not load."""

raise OSError("libllama.so: cannot open shared object file: No such file or directory")
