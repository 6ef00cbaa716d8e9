"""`axchat doctor` and the engine self-test: does llama.cpp, as built on this machine,
compute sane results in every weight type? The install runs the same self-test right
after building the engine. Importing this package imports neither llama_cpp nor torch."""
