"""`axchat serve` settings: defaults, config files, `AXCHAT_*` variables and flags.

Precedence, lowest first: built-in defaults, `/etc/axchat/config.toml`,
`$XDG_CONFIG_HOME/axchat/config.toml` (or the one file `$AXCHAT_CONFIG` / `--config`
names instead of both), `AXCHAT_*` environment variables, command-line flags. Every
source goes through the same converters, so a bad value reads the same wherever it was.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from axchat.protocol.v1 import DEFAULT_MAX_FRAME_BYTES, MAX_FRAME_BYTES_CEILING

SYSTEM_CONFIG = Path("/etc/axchat/config.toml")
ENV_CONFIG = "AXCHAT_CONFIG"
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKEND_CHOICES = ("auto", "llamacpp", "torch", "aipu")
# llamacpp weight types; "auto": the float type an explicit --dtype names, else q8_0.
QUANTS = ("auto", "f32", "f16", "bf16", "q8_0", "q4_k_m")
LOG_LEVELS = ("debug", "info", "warning", "error")
# auto: draft with a draft model, else ngram.
SPECULATE_MODES = ("auto", "off", "ngram", "draft")
# Keep-alive of a daemon a client started for you (`--autostarted`), as Ollama does: a
# per-user daemon nobody asked for should not hold a model's memory all day. A service
# someone installed keeps its model for ever unless told otherwise.
AUTOSTART_KEEP_ALIVE_S = 300.0


@dataclass(frozen=True)
class ServeConfig:
    model: str | None  # None: the default model (built on first use)
    backend: str = "auto"  # resolved at start-up (daemon/backend_choice.py)
    quant: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    socket: str | None = None
    context: int | None = None
    threads: int | None = None
    # Compile the decode step at load (torch backend, lean path). Off by default: on
    # this project's 2-core CPU it cost minutes and gained nothing measurable (docs/performance.md).
    compile: bool = False
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    drain_timeout_s: float = 10.0
    log_level: str = "info"
    max_running: int | None = None  # None: what the backend can batch
    max_queued: int = 32
    max_per_client: int = 8
    # None: three quarters of max_running + max_queued, so that one connection (a web
    # bridge with all its users, one busy program) can never take every slot.
    max_per_connection: int | None = None
    # KV pools; None: a share of available memory (host_memory.default_kv_bytes).
    prefix_cache_mb: int | None = None
    running_kv_mb: int | None = None
    client_timeout_s: float = 30.0
    keep_alive_s: float | None = None  # None: keep the model loaded for ever
    socket_group: str | None = None  # group that may use the socket (system layout)
    socket_mode: int = 0o660
    check: bool = False  # validate settings, model and device, then exit
    build_root: str | None = None  # aipu: where the SDK's compiled models live
    aipu_device: str | None = None  # aipu: card selector; None: $AXELERA_DEVICE_SELECTOR, else each in turn
    aipu_runtime: str | None = None  # aipu: real or emulator; None: $AXCHAT_AIPU_RUNTIME, else real
    tokenizer_dir: str | None = None  # aipu: the tokenizer's directory; None: the build tree's, else the hub
    keys_dir: str | None = None  # CURVE keys for a tcp:// socket; None: $XDG_CONFIG_HOME/axchat/keys
    insecure_tcp: bool = False  # a tcp:// socket without CURVE, allowed on loopback only
    devices: int | str = 1  # how many devices to drive, or "all" (daemon/device_group.py)
    speculate: str = "auto"  # greedy streams' proposed tokens (actors/device/drafts.py); parse resolves auto
    draft_model: str | None = None  # llama.cpp: the model that proposes them with --speculate draft


class ConfigError(Exception):
    """A setting is unknown or has a bad value; the message names where it came from."""


# ---------------------------------------------------------------- value converters


def _str(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _choice(*choices: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return convert


def _positive_int(value: object) -> int:
    if isinstance(value, str):
        value = int(value, 10)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _non_negative_int(value: object) -> int:
    if isinstance(value, str):
        value = int(value, 10)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return value


def _auto_or(convert: Callable[[object], int]) -> Callable[[object], int | None]:
    """`auto` (None: the daemon decides), else what `convert` accepts."""

    def auto_or(value: object) -> int | None:
        return None if value == "auto" else convert(value)

    return auto_or


def _frame_bytes(value: object) -> int:
    # A ceiling by design: memory for one refused frame is a small multiple of this.
    size = _positive_int(value)
    if size > MAX_FRAME_BYTES_CEILING:
        raise ValueError(f"{size} is over the most a daemon accepts, {MAX_FRAME_BYTES_CEILING} (16 MiB)")
    return size


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def _seconds(value: object) -> float:
    if isinstance(value, str):
        value = float(value)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"expected seconds >= 0, got {value!r}")
    return float(value)


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
FOREVER = ("forever", "infinity", "inf", "-1")


def parse_duration(value: object) -> float | None:
    """`5m`, `90s`, `1h`, `0` or a number of seconds; `forever` (or -1) means None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None if value < 0 else float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 5m, 30s or forever, got {value!r}")
    text = value.strip().lower()
    if text in FOREVER:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text)
    if match is None:
        raise ValueError(f"expected a duration such as 5m, 30s, 0 or forever, got {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _mode(value: object) -> int:
    if isinstance(value, str):
        value = int(value, 8)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise ValueError(f"expected a file mode such as 0660, got {value!r}")
    if value & 0o007:
        raise ValueError(f"mode {value:04o} would let every user use the socket")
    return value


def _device_count(value: object) -> int | str:
    if value == "all":
        return "all"
    try:
        count = _positive_int(value)
    except ValueError:
        raise ValueError(f"expected a number of devices or all, got {value!r}") from None
    return count


def _group(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    return _str(value)


# key in files (and, upper-cased, in AXCHAT_* names) -> (ServeConfig field, converter)
SETTINGS: dict[str, tuple[str, Callable[[object], Any]]] = {
    "model": ("model", _str),
    "backend": ("backend", _choice(*BACKEND_CHOICES)),
    "quant": ("quant", _choice(*QUANTS)),
    "device": ("device", _str),
    "dtype": ("dtype", _choice(*DTYPES)),
    "socket": ("socket", _str),
    "context": ("context", _positive_int),
    "threads": ("threads", _positive_int),
    "compile": ("compile", _bool),
    "max_frame_bytes": ("max_frame_bytes", _frame_bytes),
    "drain_timeout": ("drain_timeout_s", _seconds),
    "log_level": ("log_level", _choice(*LOG_LEVELS)),
    "keep_alive": ("keep_alive_s", parse_duration),
    "socket_group": ("socket_group", _group),
    "socket_mode": ("socket_mode", _mode),
    "max_running": ("max_running", _positive_int),
    "max_queued": ("max_queued", _positive_int),
    "max_per_client": ("max_per_client", _positive_int),
    "max_per_connection": ("max_per_connection", _positive_int),
    "prefix_cache_mb": ("prefix_cache_mb", _auto_or(_non_negative_int)),
    "running_kv_mb": ("running_kv_mb", _auto_or(_positive_int)),
    "client_timeout": ("client_timeout_s", _seconds),
    "build_root": ("build_root", _str),
    "aipu_device": ("aipu_device", _str),
    "aipu_runtime": ("aipu_runtime", _choice("real", "emulator")),
    "tokenizer_dir": ("tokenizer_dir", _str),
    "keys_dir": ("keys_dir", _str),
    "insecure_tcp": ("insecure_tcp", _bool),
    "devices": ("devices", _device_count),
    "speculate": ("speculate", _choice(*SPECULATE_MODES)),
    "draft_model": ("draft_model", _str),
}


def env_name(key: str) -> str:
    return "AXCHAT_" + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _convert(key: str, value: object, source: str) -> tuple[str, Any]:
    field, convert = SETTINGS[key]
    try:
        return field, convert(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {key}: {exc}") from None


# ---------------------------------------------------------------- sources


def config_files(environ: Mapping[str, str], explicit: str | None = None) -> list[Path]:
    """The files to read, lowest precedence first. An explicit file must exist."""
    named = explicit or environ.get(ENV_CONFIG)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return [path]
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or "/nonexistent") / ".config")
    candidates = [SYSTEM_CONFIG, Path(xdg) / "axchat" / "config.toml"]
    return [p for p in candidates if p.is_file()]


def read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    values = {}
    for key, value in table.items():
        if key not in SETTINGS:
            raise ConfigError(f"{path}: unknown key {key!r}; known keys: {', '.join(SETTINGS)}")
        field, converted = _convert(key, value, str(path))
        values[field] = converted
    return values


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for key in SETTINGS:
        raw = environ.get(env_name(key))
        if raw:  # empty means unset, as for AXCHAT_SOCKET elsewhere
            field, converted = _convert(key, raw, f"${env_name(key)}")
            values[field] = converted
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="axchat serve",
        description="Run the axchat daemon: load a model once, serve many clients. Settings come from "
        "/etc/axchat/config.toml, then $XDG_CONFIG_HOME/axchat/config.toml (or $AXCHAT_CONFIG), then "
        "AXCHAT_* variables, then these flags.",
        argument_default=argparse.SUPPRESS,  # only flags actually given override the layers below
    )
    help_for = {
        "model": "catalog name (axchat models), local model directory or Hugging Face hub id (default: the bundled axchat-mini)",
        "backend": "device backend: auto, llamacpp, torch or aipu (default: auto: llamacpp for GGUF files and "
        "Llama-family models on the CPU, torch for CUDA and other architectures; --device aipu implies aipu)",
        "quant": f"llamacpp weight type: {', '.join(QUANTS)} (default: auto: the float type --dtype names, else q8_0)",
        "device": "auto, cpu, cuda, cuda:N, or aipu for an Axelera Metis card (default: auto)",
        "dtype": f"{', '.join(DTYPES)} (default: auto)",
        "socket": "socket path or tcp:// endpoint (default: $AXCHAT_SOCKET or $XDG_RUNTIME_DIR/axchat/axchat.sock)",
        "context": "context length in tokens (default: the model's)",
        "threads": "torch intra-op threads (default: measured at load, the usable cores against half of them; "
        "usable: affinity and cgroup aware, minus one when 4 or more)",
        "compile": "true or false: compile the decode step at load, warmed up before ready (default: false)",
        "max_frame_bytes": f"largest frame a client may send, at most {MAX_FRAME_BYTES_CEILING} (default: 1 MiB)",
        "drain_timeout": "seconds to let requests finish on SIGTERM (default: 10)",
        "log_level": f"{', '.join(LOG_LEVELS)} (default: info)",
        "keep_alive": "unload the model after this long with no request, reload it on the next: 5m, 30s, 0 "
        "or forever (default; 5m with --autostarted)",
        "socket_group": "group (name or gid) given access to the socket and its directory",
        "socket_mode": "socket file mode, octal (default: 0660)",
        "max_running": "sequences on the device at once (default: what the backend batches)",
        "max_queued": "requests waiting for a slot, all clients together (default: 32)",
        "max_per_client": "requests running or waiting, per client connection or per user behind one (default: 8)",
        "max_per_connection": "requests running or waiting on one connection, all its users together "
        "(default: 3/4 of max_running + max_queued)",
        "prefix_cache_mb": "MiB of KV for kept conversations, 0 turns reuse off (default: auto, 1/64 of "
        "available memory within 32-256 MiB)",
        "running_kv_mb": "llama.cpp: MiB of KV for running sequences, at least one context (default: auto, 1/64 of "
        "available memory within 32-256 MiB)",
        "client_timeout": "cancel the requests of a client silent this many seconds, 0: never (default: 30)",
        "build_root": "aipu: the Voyager SDK's build directory (default: $AXELERA_FRAMEWORK/build)",
        "aipu_device": (
            "aipu: card index, name or comma list of candidates tried in turn, e.g. 1 or metis-0:1:0 "
            "(default: $AXELERA_DEVICE_SELECTOR, else the first free card with enough memory); "
            "--devices says how many of them to drive"
        ),
        "devices": "how many devices to drive, N or all (default: 1): with --device aipu, that many free "
        "cards from --aipu-device's candidates, in order (all: every candidate card); with --device cuda, "
        "that many GPUs, cuda:0 up; the CPU is one device. Requests are placed on the device holding their "
        "conversation's prefix, else the least loaded; fairness between clients holds across devices",
        "aipu_runtime": "aipu: real or emulator (default: $AXCHAT_AIPU_RUNTIME, else real)",
        "speculate": "speculative decoding of greedy requests: off; ngram (propose the tokens that followed "
        "the reply's last few tokens earlier in the prompt or reply); or draft (--draft-model proposes them). "
        "Proposals are verified in the decode step, output unchanged, only with rows the batch has spare "
        "(default: draft with --draft-model, else ngram)",
        "draft_model": "llama.cpp: a smaller model with the same vocabulary (a GGUF file, a Hugging Face directory "
        "or a pulled catalog name) that proposes tokens for --speculate draft, e.g. SmolLM2-135M for SmolLM2-1.7B",
        "tokenizer_dir": "aipu: tokenizer directory (default: <build-root>/tokenizers/<org_model>, else the hub)",
        "keys_dir": "tcp:// sockets: directory with the CURVE server key pair and allowed_clients/ "
        "(default: $XDG_CONFIG_HOME/axchat/keys; make them with `axchat keys`)",
    }
    for key, text in help_for.items():
        p.add_argument(flag_name(key), dest=key, metavar=key.upper(), help=text)
    p.add_argument("--no-compile", dest="compile", action="store_const", const="false", help="same as --compile false")
    p.add_argument(
        "--insecure-tcp",
        dest="insecure_tcp",
        action="store_const",
        const="true",
        help="serve a tcp:// socket without CURVE keys: anyone who reaches it may use it, so only a loopback "
        "address is accepted",
    )
    p.add_argument("--config", help="read this config file instead of the system and user ones")
    p.add_argument("--check", action="store_true", help="check the settings, model and device quickly, then exit")
    p.add_argument(
        "--autostarted",
        action="store_true",
        help="set by a client that starts a daemon for you: keep-alive defaults to 5m instead of forever",
    )
    return p


def parse(argv: list[str], environ: Mapping[str, str] | None = None) -> ServeConfig:
    env = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    autostarted = bool(args.pop("autostarted", False))
    # Only the built-in default differs: config files, environment and flags still win.
    cfg = ServeConfig(model=None, keep_alive_s=AUTOSTART_KEEP_ALIVE_S if autostarted else None)
    for path in config_files(env, args.pop("config", None)):
        cfg = replace(cfg, **read_file(path))
    cfg = replace(cfg, **read_env(env))
    check = bool(args.pop("check", False))
    flags = dict(_convert(key, value, flag_name(key)) for key, value in args.items())
    cfg = replace(cfg, **flags, check=check)
    if cfg.device == "aipu":
        cfg = replace(cfg, backend="aipu")
    if cfg.speculate == "auto":
        cfg = replace(cfg, speculate="draft" if cfg.draft_model else "ngram")
    if cfg.speculate == "draft" and not cfg.draft_model:
        raise ConfigError("speculate: draft needs a draft model (draft_model, --draft-model)")
    return cfg
