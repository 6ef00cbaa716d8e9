"""What the bench scripts share, a module per concern: the daemon under test, one timed
streaming request, the numbers, the machine's facts, prompt text, and the command-line
and JSON-output boilerplate. Not a benchmark itself: the scripts import it as `harness`
(Python puts the script's own directory, bench/, first on sys.path)."""
