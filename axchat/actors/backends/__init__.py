"""Device backends: the interface (`base`), the options a load takes, and one package per
engine (`torch_engine`, `aipu`, `llamacpp`) chosen by name through `registry`."""

from __future__ import annotations

from axchat.actors.backends.base import BackendInfo, Capabilities, DeviceBackend, ModelLoadError
from axchat.actors.backends.load_options import LoadOptions

__all__ = ["BackendInfo", "Capabilities", "DeviceBackend", "LoadOptions", "ModelLoadError"]
