"""The torch engine: Hugging Face transformers models on the CPU or CUDA, through a lean
Llama decode path (`lean_llama`, `lean_backend`, tuned at load by `decode_tuning`, its
matmuls split by `matmul_lanes`) or the generic one (`generic_backend`).

Named `torch_engine`, not `torch`, so that no reader (or tool that puts a package
directory on sys.path) mistakes it for the library. Importing this package imports
nothing heavy; `entry` is what the backend registry calls."""
