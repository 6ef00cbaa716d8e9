"""The AIPU engine: an Axelera Metis card through the Voyager SDK (`runtime` holds every
SDK call), or the emulator (`emulator`, `--aipu-runtime emulator`) behind the same calls.
Cards, the build tree, the model catalog, host-side embeddings and the temperature probe
each have a module. Importing this package imports nothing heavy; `entry` is what the
backend registry calls."""
