"""Device backends. Each is imported only when chosen, so torch loads only for `torch`."""

from __future__ import annotations

from axchat.actors.backends.base import BackendInfo, Capabilities, DeviceBackend, ModelLoadError

BACKENDS = ("llamacpp", "torch", "aipu")


def load_backend(
    backend: str,
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    context: int | None = None,
    threads: int | None = None,
    lanes: int | None = None,
    prefix_cache_bytes: int = 0,
    compile: bool = False,
    build_root: str | None = None,
    aipu_device: str | None = None,
    aipu_runtime: str | None = None,
    tokenizer_dir: str | None = None,
    quant: str = "auto",
) -> DeviceBackend:
    if backend == "llamacpp":
        from axchat.actors.backends import llamacpp

        why = llamacpp.unavailable()
        if why is not None:
            raise ModelLoadError(why)
        from axchat.actors.backends.llamacpp import load

        return load.load(
            model,
            quant=quant,
            dtype=dtype,
            context=context,
            threads=threads,
            prefix_cache_bytes=prefix_cache_bytes,
        )
    if backend == "torch":
        from axchat.actors.backends import torch_backend

        return torch_backend.load(
            model,
            device=device,
            dtype=dtype,
            context=context,
            threads=threads,
            lanes=lanes,
            prefix_cache_bytes=prefix_cache_bytes,
            compile=compile,
        )
    if backend == "aipu":
        from axchat.actors.backends.aipu_backend import AipuBackend

        return AipuBackend.load(
            model,
            context=context,
            build_root=build_root,
            aipu_device=aipu_device,
            runtime=aipu_runtime,
            tokenizer_dir=tokenizer_dir,
        )
    raise ModelLoadError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BackendInfo", "Capabilities", "DeviceBackend", "ModelLoadError", "load_backend"]
