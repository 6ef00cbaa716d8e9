"""`axchat doctor`: the engine self-test plus what a problem report needs (CPU, engine
build, each weight type's result and speed, the default socket). Exit status 0 only
when every weight type passes."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import asdict

from axchat.doctor import machine, selftest


def _daemon_line(socket: str | None) -> tuple[str, str]:
    """(the socket, what answers there)."""
    from axchat import endpoint as ep
    from axchat.client import Client, DaemonUnavailable, RequestFailed

    where = ep.describe(ep.client_endpoint(socket))
    try:
        with Client(socket, connect_timeout_s=1.0) as client:
            hello = client.hello()
    except (DaemonUnavailable, RequestFailed) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return where, f"no daemon answers ({first})"
    return where, f"a daemon answers: {hello.model} on {hello.backend} ({hello.dtype}, {hello.device})"


def _engine_version() -> str:
    from importlib import metadata

    try:
        return f"llama-cpp-python {metadata.version('llama_cpp_python')}"
    except metadata.PackageNotFoundError:
        return "llama-cpp-python is not installed (`make venv` builds it)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="axchat doctor", description="test the engine on this machine and print what a problem report needs"
    )
    p.add_argument("--socket", help="the daemon socket to look at (default: where every client looks)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = p.parse_args(argv)

    model, flags = machine.cpuinfo()
    kernel_flags = machine.kernel_flags(flags)
    cpu = {"model": model, "machine": platform.machine(), "cores": os.cpu_count(), "kernel_flags": kernel_flags}
    version, build = _engine_version(), machine.build_record()
    if not args.json:
        print(f"cpu:     {model} ({cpu['machine']}, {cpu['cores']} cores)")
        print(f"         {' '.join(kernel_flags) or 'no vector flags found'}")
        built = f", built {build.get('variant')} ({' '.join(map(str, build.get('cmake_args') or []))})" if build else ""  # type: ignore[call-overload]
        print(f"engine:  {version}{built}")
        print("self-test on axchat-mini (each weight type in its own process):", flush=True)
    results = selftest.run_all()
    info = next((r.system_info for r in results if r.system_info), "")
    socket, daemon = _daemon_line(args.socket)
    passed = all(r.passed for r in results)
    if args.json:
        report = {
            "cpu": cpu,
            "engine": {"version": version, "build": build, "system_info": info},
            "weight_types": [asdict(r) for r in results],
            "socket": socket,
            "daemon": daemon,
            "passed": passed,
        }
        print(json.dumps(report, indent=2))
    else:
        for r in results:
            figures = []
            if r.agreement is not None:
                figures.append(f"agrees with f32 {r.agreement:.0%}")
            if r.decode_tok_s is not None:
                figures.append(f"decode {r.decode_tok_s:.0f} tokens/s")
            print(f"  {r.kind:<7} {'pass' if r.passed else 'FAIL'}  {r.detail}" + (f"  ({', '.join(figures)})" if figures else ""))
        print(f"system info: {info or 'unknown (no weight type ran)'}")
        print(f"socket:  {socket}: {daemon}")
        if passed:
            print("all weight types pass")
        else:
            print(
                "the engine failed on this machine: report the lines above. `make venv` rebuilds it "
                "(after `rm .venv/bin/.llamacpp-installed`), falling back to a portable build when the native one fails",
                file=sys.stderr,
            )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
