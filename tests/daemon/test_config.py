"""Settings layering: defaults < /etc file < user file < AXCHAT_* < flags."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from axchat.daemon import config
from axchat.daemon.config import ConfigError, ServeConfig, parse, parse_duration


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, dict[str, str]]:
    system = tmp_path / "etc" / "config.toml"
    user = tmp_path / "xdg" / "axchat" / "config.toml"
    system.parent.mkdir(parents=True)
    user.parent.mkdir(parents=True)
    monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
    return system, user, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def test_defaults_without_any_source(layout: tuple[Path, Path, dict[str, str]]) -> None:
    _, _, env = layout
    cfg = parse([], env)
    assert cfg.model is None and cfg.device == "auto" and cfg.keep_alive_s is None
    assert cfg.drain_timeout_s == ServeConfig.drain_timeout_s and cfg.socket_mode == 0o660
    assert cfg.threads is None and cfg.compile is False  # None: measured at load from the usable cores


def test_an_autostarted_daemon_unloads_after_5m_unless_a_setting_says_otherwise(
    layout: tuple[Path, Path, dict[str, str]],
) -> None:
    _, user, env = layout
    assert parse(["--autostarted"], env).keep_alive_s == config.AUTOSTART_KEEP_ALIVE_S == 300.0
    assert parse(["--autostarted"], {**env, "AXCHAT_KEEP_ALIVE": "forever"}).keep_alive_s is None
    user.write_text('keep_alive = "1h"\n')
    assert parse(["--autostarted"], env).keep_alive_s == 3600.0
    assert parse([], env).keep_alive_s == 3600.0


def test_each_layer_overrides_the_one_below(layout: tuple[Path, Path, dict[str, str]]) -> None:
    system, user, env = layout
    system.write_text(
        'model = "/sys/model"\ndevice = "cpu"\ndtype = "float32"\ncontext = 512\n'
        'log_level = "warning"\nsocket_group = "axchat"\nsocket_mode = 0o660\n'
    )
    user.write_text('device = "cuda"\ncontext = 1024\nkeep_alive = "5m"\n')
    env = {**env, "AXCHAT_CONTEXT": "256", "AXCHAT_DRAIN_TIMEOUT": "3", "AXCHAT_KEEP_ALIVE": "30s"}
    cfg = parse(["--keep-alive", "0", "--log-level", "debug"], env)
    assert cfg.model == "/sys/model"  # only in /etc
    assert cfg.dtype == "float32" and cfg.socket_group == "axchat" and cfg.socket_mode == 0o660
    assert cfg.device == "cuda"  # user file over /etc
    assert cfg.context == 256  # environment over both files
    assert cfg.drain_timeout_s == 3.0
    assert cfg.keep_alive_s == 0.0  # flag over environment over user file
    assert cfg.log_level == "debug"  # flag over /etc


def test_axchat_config_replaces_both_files(layout: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    system, user, env = layout
    system.write_text('device = "cpu"\n')
    user.write_text('dtype = "bfloat16"\n')
    only = tmp_path / "only.toml"
    only.write_text('model = "/only"\n')
    cfg = parse([], {**env, "AXCHAT_CONFIG": str(only)})
    assert (cfg.model, cfg.device, cfg.dtype) == ("/only", "auto", "auto")
    flag = tmp_path / "flag.toml"
    flag.write_text('model = "/flag"\n')
    assert parse(["--config", str(flag)], {**env, "AXCHAT_CONFIG": str(only)}).model == "/flag"
    with pytest.raises(ConfigError, match="does not exist"):
        parse([], {**env, "AXCHAT_CONFIG": str(tmp_path / "missing.toml")})


def test_unknown_key_names_the_key_and_the_file(layout: tuple[Path, Path, dict[str, str]]) -> None:
    _, user, env = layout
    user.write_text('model = "/m"\nkeep_alvie = "5m"\n')
    with pytest.raises(ConfigError) as err:
        parse([], env)
    assert str(user) in str(err.value) and "'keep_alvie'" in str(err.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('context = "big"\n', "context"),
        ("context = -3\n", "context"),
        ('dtype = "float8"\n', "dtype"),
        ("socket_mode = 0o666\n", "socket_mode"),
        ("model = \n", "not valid TOML"),
    ],
)
def test_bad_values_name_the_file_and_key(layout: tuple[Path, Path, dict[str, str]], text: str, where: str) -> None:
    _, user, env = layout
    user.write_text(text)
    with pytest.raises(ConfigError) as err:
        parse([], env)
    assert str(user) in str(err.value) and where in str(err.value)


def test_bad_environment_value_names_the_variable(layout: tuple[Path, Path, dict[str, str]]) -> None:
    _, _, env = layout
    with pytest.raises(ConfigError, match=r"\$AXCHAT_THREADS"):
        parse([], {**env, "AXCHAT_THREADS": "many"})
    with pytest.raises(ConfigError, match="--keep-alive"):
        parse(["--keep-alive", "soon"], env)


def test_durations() -> None:
    assert parse_duration("5m") == 300.0
    assert parse_duration("90s") == 90.0 and parse_duration("90") == 90.0
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration("0") == 0.0 and parse_duration(0) == 0.0
    assert parse_duration("forever") is None and parse_duration(-1) is None
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


def test_serve_reports_a_config_error_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('modle = "x"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "axchat", "serve"],
        env={**os.environ, "AXCHAT_CONFIG": str(bad)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"axchat serve: error: {bad}: unknown key 'modle'; known keys: " + ", ".join(
        config.SETTINGS
    )


def test_compile_comes_from_file_env_or_flag(layout: tuple[Path, Path, dict[str, str]]) -> None:
    _, user, env = layout
    user.write_text("compile = true\n")
    assert parse([], env).compile is True
    assert parse([], {**env, "AXCHAT_COMPILE": "false"}).compile is False
    assert parse(["--no-compile"], env).compile is False
    assert parse(["--compile", "on"], {**env, "AXCHAT_COMPILE": "no"}).compile is True
    with pytest.raises(ConfigError, match="compile"):
        parse(["--compile", "maybe"], env)


def test_tcp_security_settings_come_from_file_env_or_flag(layout: tuple[Path, Path, dict[str, str]]) -> None:
    _, user, env = layout
    assert parse([], env).insecure_tcp is False and parse([], env).keys_dir is None
    user.write_text('keys_dir = "/srv/axchat/keys"\ninsecure_tcp = true\n')
    assert parse([], env).keys_dir == "/srv/axchat/keys" and parse([], env).insecure_tcp is True
    env = {**env, "AXCHAT_KEYS_DIR": "/etc/axchat/keys", "AXCHAT_INSECURE_TCP": "false"}
    assert parse([], env).keys_dir == "/etc/axchat/keys" and parse([], env).insecure_tcp is False
    assert parse(["--insecure-tcp", "--keys-dir", "/k"], env) == replace(parse([], env), insecure_tcp=True, keys_dir="/k")
    with pytest.raises(ConfigError, match="insecure_tcp"):
        parse([], {**env, "AXCHAT_INSECURE_TCP": "maybe"})


def test_cgroup_quota_caps_the_usable_cores(tmp_path: Path) -> None:
    from axchat.host_cores import cgroup_cpu_limit

    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert cgroup_cpu_limit(quota) == 2  # 1.5 CPUs: two threads may run
    quota.write_text("max 100000\n")
    assert cgroup_cpu_limit(quota) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_backend_and_quant_come_from_file_env_or_flag(layout: tuple[Path, Path, dict[str, str]], tiny_model_dir: Path) -> None:
    from axchat.daemon.backend_choice import choose_backend

    _, user, env = layout
    assert (parse([], env).backend, parse([], env).quant) == ("auto", "auto")
    user.write_text('backend = "torch"\nquant = "q4_k_m"\n')
    assert (parse([], env).backend, parse([], env).quant) == ("torch", "q4_k_m")
    cfg = parse(["--backend", "llamacpp", "--quant", "f16"], {**env, "AXCHAT_QUANT": "bf16"})
    assert (cfg.backend, cfg.quant) == ("llamacpp", "f16")
    with pytest.raises(ConfigError, match="quant"):
        parse(["--quant", "q3"], env)
    # auto: an explicit backend stands; the AIPU by device; a non-Llama directory on torch.
    assert choose_backend(cfg, str(tiny_model_dir))[0] == "llamacpp"
    assert choose_backend(parse(["--device", "aipu"], env), "x")[0] == "aipu"
    assert choose_backend(parse(["--backend", "auto"], env), "some/hub-id")[0] == "torch"
    # A Llama-family model on the CPU is llama.cpp's, with nothing to say about it.
    assert choose_backend(parse(["--backend", "auto"], env), str(tiny_model_dir)) == ("llamacpp", None)


def test_devices_is_a_count_or_all_from_file_env_or_flag(layout: tuple[Path, Path, dict[str, str]]) -> None:
    _, user, env = layout
    assert parse([], env).devices == 1
    user.write_text("devices = 4\n")
    assert parse([], env).devices == 4
    assert parse([], {**env, "AXCHAT_DEVICES": "all"}).devices == "all"
    assert parse(["--devices", "2"], {**env, "AXCHAT_DEVICES": "all"}).devices == 2
    for bad in ("0", "two", "-1"):
        with pytest.raises(ConfigError, match="devices: expected a number of devices or all"):
            parse(["--devices", bad], env)


def test_speculation_is_on_unless_turned_off(layout: tuple[Path, Path, dict[str, str]]) -> None:
    _, user, env = layout
    assert parse([], env).speculate == "ngram"
    user.write_text('speculate = "off"\n')
    assert parse([], env).speculate == "off"
    assert parse(["--speculate", "ngram"], env).speculate == "ngram"
    with pytest.raises(ConfigError, match="speculate: draft needs a draft model"):
        parse(["--speculate", "draft"], env)


def test_a_draft_model_means_draft_speculation_unless_another_mode_is_named(layout: tuple[Path, Path, dict[str, str]]) -> None:
    _, user, env = layout
    user.write_text('draft_model = "/srv/models/SmolLM2-135M-Instruct"\n')
    cfg = parse([], env)
    assert (cfg.speculate, cfg.draft_model) == ("draft", "/srv/models/SmolLM2-135M-Instruct")
    assert parse(["--speculate", "off"], env).speculate == "off"  # the configured draft model goes unloaded
    assert parse(["--draft-model", "small.gguf"], {**env, "AXCHAT_SPECULATE": "ngram"}).speculate == "ngram"
    with pytest.raises(ConfigError, match="speculate: expected one of"):
        parse(["--speculate", "model"], env)
