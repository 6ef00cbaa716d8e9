"""Device backends. Each is imported only when chosen, so torch loads only for `torch`."""

from __future__ import annotations

from axchat.actors.backends.base import BackendInfo, Capabilities, DeviceBackend, ModelLoadError

BACKENDS = ("torch",)


def load_backend(
    backend: str,
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    context: int | None = None,
    threads: int | None = None,
    prefix_cache_bytes: int = 0,
) -> DeviceBackend:
    if backend == "torch":
        from axchat.actors.backends.torch_backend import TorchBackend

        return TorchBackend.load(
            model, device=device, dtype=dtype, context=context, threads=threads, prefix_cache_bytes=prefix_cache_bytes
        )
    raise ModelLoadError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BackendInfo", "Capabilities", "DeviceBackend", "ModelLoadError", "load_backend"]
