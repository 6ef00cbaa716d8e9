"""Start-up and memory of the default path: the daemon's ready time and RSS, the size of
a fresh `make run` venv, and llama-server's ready time and RSS at the same KV cells.

    .venv/bin/python bench/startup.py [--model DIR] [--venv DIR | --no-venv] [--llama-server PATH]

--model: a Llama-family directory (default: the SmolLM2-135M shape with random weights,
built by axchat.testing.tiny_model into the cache). The daemon runs flag-less (llama.cpp,
q8_0, its own thread choice) from the fresh venv, so nothing but what `make run`
installs is importable; `ready_s` is from the process start to its `ready:` line (the
GGUF conversion is done beforehand, once, so it is not counted), `rss_mib` its VmRSS
then and `rss_after_reply_mib` after one 64-token reply.

The venv: `make venv VENV=<tmp>` as a fresh clone's `make run` makes it (pip from its
cache, the engine from the wheel cached in ~/.cache/axchat/engine); `venv_mib` is
`du -sm` of it, `install_s` how long that took. --venv DIR measures an existing one.

llama-server (--llama-server PATH; else the newest one bench/peers.py built under
~/.cache/axchat/llama-server) serves the very GGUF file the daemon loaded with `-c` the
daemon's KV cells, the same threads and batch sizes, twice: with its own default slots
(`-np` auto: a few slots in one unified pool) for `llama_server_*` and `rss_ratio*`, and
with the daemon's concurrency (`-np` its max_running sequences, `--kv-unified`: one pool
for all of them, as the daemon holds) for `llama_server_same_slots_*` and
`rss_ratio_same_slots*`. Each `*_ready_s` runs to its first healthy /health, each
`*_rss_after_reply_mib` follows the daemon's own 64-token request. Each `rss_anon*` is
the anonymous part of that RSS, with `rss_anon_ratio*`: mapped files count in
RSS as far as the page cache holds them (a fresh venv's libraries, just written, count
more), so that part of `rss_ratio` moves between runs and machines. Without a binary
that part is skipped, saying so.

Prints ONE JSON object on stdout; progress on stderr. Timings on a busy machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness.daemon import Daemon, bench_env, serving
from harness.numbers import rnd
from harness.output import BenchError, Log, run_main

log = Log("startup")
REPO = Path(__file__).resolve().parents[1]
CELLS_RE = re.compile(r"loaded .* (\d+) threads?, (\d+) KV cells")
LLAMA_SERVER_CACHE = Path.home() / ".cache" / "axchat" / "llama-server"
KEPT_WAIT_S = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/startup.py", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", help="Llama-family model directory (default: the SmolLM2-135M shape, random weights)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--venv", help="measure this existing make-run venv instead of making a fresh one")
    where.add_argument("--no-venv", action="store_true", help="run the daemon from this interpreter; no venv_mib")
    p.add_argument("--llama-server", help="llama-server binary (default: the newest under ~/.cache/axchat/llama-server)")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds each server may take (default 600)")
    return p.parse_args(argv)


def memory(pid: int, suffix: str = "") -> dict[str, float | None]:
    """RSS, and its anonymous part: the process's own pages, without the mapped files
    (libraries, the GGUF), whose resident share follows what the page cache holds of
    them. Summed over /proc/PID/smaps, the kernel's walk of the page tables: VmRSS (a
    counter) read right after a reply was seen up to 11 MiB above it, for seconds."""
    rss = anon = 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line.startswith("Rss:"):
            rss += int(line.split()[1])
        elif line.startswith("Anonymous:"):
            anon += int(line.split()[1])
    if not rss:
        raise BenchError(f"no RSS for pid {pid}")
    return {f"rss{suffix}_mib": rnd(rss / 1024), f"rss_anon{suffix}_mib": rnd(anon / 1024)}


def fresh_venv(root: Path) -> tuple[Path, float]:
    venv = root / "venv"
    log(f"making a fresh make-run venv in {venv}")
    t0 = time.monotonic()
    done = subprocess.run(["make", "-C", str(REPO), "venv", f"VENV={venv}"], capture_output=True, text=True, env=bench_env())
    if done.returncode != 0:
        raise BenchError("make venv failed:\n" + (done.stdout + done.stderr)[-2000:])
    return venv, time.monotonic() - t0


def du_mib(path: Path) -> int:
    return int(subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def default_model() -> str:
    from axchat.testing import tiny_model

    return str(tiny_model.ensure(tiny_model.default_model_dir().with_name("startup-smollm2-135m"), shape="smollm2-135m"))


def find_llama_server(given: str | None) -> tuple[Path | None, str]:
    if given:
        path = Path(given)
        return (path, "") if path.is_file() else (None, f"{given} is not a file")
    # Finished builds only: a build in progress lives under a dot-directory.
    found = sorted(
        (p for p in LLAMA_SERVER_CACHE.glob("**/llama-server")
         if p.is_file() and os.access(p, os.X_OK) and not any(part.startswith(".") for part in p.relative_to(LLAMA_SERVER_CACHE).parts)),
        key=lambda p: p.stat().st_mtime,
    )  # fmt: skip
    if found:
        return found[-1], ""
    return None, f"no llama-server binary (--llama-server PATH, or bench/peers.py builds one into {LLAMA_SERVER_CACHE})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llama_server(binary: Path, gguf: Path, cells: int, threads: int, timeout_s: float, slots: list[str]) -> dict[str, Any]:
    """Ready time and RSS (at ready, after one reply) of llama-server with `slots` (its
    -np/--kv-unified arguments; [] for its defaults), keys without a prefix."""
    port = free_port()
    cmd = [str(binary), "-m", str(gguf), "-c", str(cells), "-t", str(threads), "-tb", str(threads),
           "-b", "512", "-ub", "512", *slots, "--host", "127.0.0.1", "--port", str(port), "--no-webui"]  # fmt: skip
    log("starting llama-server: " + " ".join(cmd))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise BenchError(f"llama-server exited ({proc.returncode}): {proc.stderr.read().decode()[-1500:] if proc.stderr else ''}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout_s:
                raise BenchError(f"llama-server not healthy after {timeout_s:.0f}s")
            time.sleep(0.05)  # polling a server's health with a deadline
        out = {"ready_s": rnd(time.monotonic() - t0), **memory(proc.pid)}
        # The daemon's own request, so that both are compared having done the same work.
        body = json.dumps({"prompt": "Once upon a time", "n_predict": 64, "ignore_eos": True}).encode()
        post = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(post, timeout=timeout_s) as r:
            r.read()
        return out | memory(proc.pid, "_after_reply")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from axchat.actors.backends.llamacpp.load import DEFAULT_WEIGHT_TYPE, gguf_for
    from axchat.client import Client
    from axchat.host_cores import default_threads
    from axchat.protocol import v1

    model = args.model or default_model()
    out: dict[str, Any] = {"model": model}
    # Converted once here, so ready_s is the daemon's start, not a one-off conversion.
    gguf = gguf_for(Path(model), DEFAULT_WEIGHT_TYPE, default_threads())
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="axchat-startup-") as tmp:
        if args.venv or not args.no_venv:
            venv, install_s = (Path(args.venv), None) if args.venv else fresh_venv(Path(tmp))
            python = str(venv / "bin" / "python")
            out["venv_mib"] = du_mib(venv)
            if install_s is not None:
                out["install_s"] = rnd(install_s)
        daemon = Daemon(model, [], log, python=python)
        with serving(daemon, args.ready_timeout):
            assert daemon.proc is not None and daemon.ready_s is not None
            out["ready_s"] = rnd(daemon.ready_s)
            out.update(memory(daemon.proc.pid))
            found = CELLS_RE.search(daemon.log_text())
            if found is None:
                raise BenchError("the daemon's log names no KV cells (not on llama.cpp?)")
            threads, cells = int(found.group(1)), int(found.group(2))
            with Client(daemon.socket) as client:
                status = client.status()
                out["max_running"] = status.max_running
                request = v1.Generate(prompt="Once upon a time", sampling=v1.Sampling(max_tokens=64, ignore_eos=True))
                for _ in client.generate(request):
                    pass
                # The finished reply's KV is copied out of the pool just after its last
                # token: RSS is read once that is done (or it will not be).
                after, deadline = client.status(), time.monotonic() + KEPT_WAIT_S
                while not after.prefix_cache_entries and time.monotonic() < deadline:
                    time.sleep(0.05)
                    after = client.status()
            out.update(memory(daemon.proc.pid, "_after_reply"))
            out["kv_cells"], out["threads"] = cells, threads
            out["memory_parts_mib"] = {
                "weights": rnd(status.weights_bytes / 2**20),
                "running_kv": rnd(status.running_kv_bytes / 2**20),
                "prefix_kv": rnd(status.prefix_kv_bytes / 2**20),
                # The reply's conversation, copied out of the pool to be resumed (llama-server
                # keeps it in its slot's cells): part of rss_after_reply_mib.
                "kept_after_reply": rnd(after.prefix_cache_bytes / 2**20),
            }
    binary, why = find_llama_server(args.llama_server)
    if binary is None:
        log(f"llama-server part skipped: {why}")
        out["llama_server_skipped"] = why
    else:
        # Its default slots, then the daemon's: as many sequences at once, in one pool.
        same_slots = ["-np", str(out["max_running"]), "--kv-unified"]
        for name, slots in (("", []), ("_same_slots", same_slots)):
            peer = llama_server(binary, gguf, cells, threads, args.ready_timeout, slots)
            out[f"llama_server{name}_args"] = " ".join(slots) or "(default -np)"
            out.update({f"llama_server{name}_{key}": value for key, value in peer.items()})
            out[f"rss_ratio{name}"] = round(out["rss_mib"] / peer["rss_mib"], 3)
            out[f"rss_ratio{name}_after_reply"] = round(out["rss_after_reply_mib"] / peer["rss_after_reply_mib"], 3)
            out[f"rss_anon_ratio{name}"] = round(out["rss_anon_mib"] / peer["rss_anon_mib"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    if shutil.which("make") is None:
        print("startup: error: make is not installed", file=sys.stderr)
        return 1
    return run_main("startup", bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
