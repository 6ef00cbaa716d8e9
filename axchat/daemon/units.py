"""`axchat service print|install [--user]`: the systemd unit files, with `ExecStart=`
pointed at this installation's `axchat`. The templates are package data
(`axchat/daemon/systemd/`, linked from the checkout's `systemd/`), so a wheel install
has them too."""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

UNIT_PACKAGE = "axchat.daemon"
UNIT_DIR = "systemd"  # inside UNIT_PACKAGE
SYSTEM_UNIT = "axchat.service"
USER_UNIT = "axchat-user.service"
INSTALLED_NAME = "axchat.service"  # both install as axchat.service in their own manager
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
TEMPLATE_EXEC = "/usr/local/bin/axchat"
SERVICE_USER = "axchat"


class UnitError(Exception):
    """One line for the user."""


def axchat_command() -> str:
    """How a service manager should start this installation's axchat."""
    script = Path(sys.executable).parent / "axchat"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    found = shutil.which("axchat")
    if found:
        return found
    return f"{shlex.quote(sys.executable)} -m axchat"


def template(user: bool) -> importlib.resources.abc.Traversable:
    return importlib.resources.files(UNIT_PACKAGE) / UNIT_DIR / (USER_UNIT if user else SYSTEM_UNIT)


def render(user: bool, command: str | None = None) -> str:
    unit = template(user)
    try:
        text = unit.read_text()
    except OSError as exc:
        raise UnitError(f"cannot read the unit template {unit}: {exc.strerror}") from None
    return text.replace(TEMPLATE_EXEC, command or axchat_command())


# Where each sandboxing setting of a unit hides files from the service, and the drop-in
# line that lets them through.
_HIDDEN_BY = (
    ("PrivateTmp", ("/tmp", "/var/tmp"), "PrivateTmp=no"),
    ("ProtectHome", ("/home", "/root", "/run/user"), "ProtectHome=read-only"),
)


def _setting_on(text: str, key: str) -> bool:
    values = [line.split("=", 1)[1].strip() for line in text.splitlines() if line.strip().startswith(f"{key}=")]
    return bool(values) and values[-1] not in ("no", "false", "0", "off")


def sandbox_warnings(text: str, command: str, package_dir: Path | None = None) -> list[str]:
    """Why the unit `text` could not start `command`: its program, or the axchat package
    it runs (`package_dir`, default this one; an editable install lives in its checkout),
    under a directory the unit's sandboxing hides. One line each, saying what to do."""
    import axchat

    package = str(package_dir or Path(axchat.__file__).parent)
    places = {"ExecStart program": shlex.split(command)[0], "axchat package": package}
    warnings = []
    for key, hidden, drop_in in _HIDDEN_BY:
        if not _setting_on(text, key):
            continue
        for what, path in places.items():
            under = next((h for h in hidden if path == h or path.startswith(h + "/")), None)
            if under is not None:
                warnings.append(
                    f"warning: the {what} {path} is under {under}, which this unit's {key}= hides from the "
                    f"service, so it cannot start: install axchat system-wide (e.g. in /opt or /usr/local, "
                    f"then --exec PATH), or allow it with a drop-in (`systemctl edit axchat`: {drop_in})"
                )
    return warnings


def user_unit_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def ensure_service_account() -> list[str]:
    """Create the `axchat` system group and user if missing; returns what was done."""
    import grp
    import pwd

    done = []
    try:
        grp.getgrnam(SERVICE_USER)
    except KeyError:
        _run_tool("groupadd", "--system", SERVICE_USER)
        done.append(f"created group {SERVICE_USER}")
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        nologin = shutil.which("nologin") or "/usr/sbin/nologin"
        _run_tool(
            "useradd", "--system", "--gid", SERVICE_USER, "--home-dir", f"/var/lib/{SERVICE_USER}",
            "--no-create-home", "--shell", nologin, SERVICE_USER,
        )  # fmt: skip
        done.append(f"created user {SERVICE_USER}")
    return done


def _run_tool(name: str, *args: str) -> None:
    tool = shutil.which(name)
    if tool is None:
        raise UnitError(f"{name} is not installed; create the {SERVICE_USER} user and group yourself")
    proc = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise UnitError(f"{name} {' '.join(args)} failed: {proc.stderr.strip()}")


def install(user: bool, unit_dir: Path | None, command: str | None, create_account: bool) -> str:
    text = render(user, command)
    target_dir = unit_dir or (user_unit_dir() if user else SYSTEM_UNIT_DIR)
    notes = []
    if not user and create_account:
        if os.geteuid() != 0:
            raise UnitError("installing the system unit needs root (or use --user)")
        notes = ensure_service_account()
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / INSTALLED_NAME
    target.write_text(text)
    ctl = "systemctl --user" if user else "systemctl"
    notes.append(f"wrote {target}")
    notes.append(f"next: {ctl} daemon-reload && {ctl} enable --now axchat")
    return "\n".join(notes)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axchat service", description="Print or install axchat's systemd unit.")
    p.add_argument(
        "action", choices=["print", "install"], help="print the unit on stdout, or install it where its manager reads it"
    )
    p.add_argument("--user", action="store_true", help="the per-user unit, for `systemctl --user`")
    p.add_argument("--exec", dest="command", help="command for ExecStart= (default: this installation's axchat)")
    p.add_argument("--unit-dir", type=Path, help="write the unit here instead of the manager's directory")
    p.add_argument("--no-account", action="store_true", help="do not create the axchat user and group")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        command = args.command or axchat_command()
        for warning in sandbox_warnings(render(args.user, command), command):
            print(f"axchat service: {warning}", file=sys.stderr)
        if args.action == "print":
            sys.stdout.write(render(args.user, command))
        else:
            print(install(args.user, args.unit_dir, args.command, not args.no_account), file=sys.stderr)
    except UnitError as exc:
        print(f"axchat service: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
