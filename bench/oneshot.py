"""One question, one answer: the seed script's way against `axchat ask` on a warm daemon.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/oneshot.py --model DIR [--runs 5] [--max-tokens 32] [--prompt TEXT]

Seed style: a fresh Python process imports transformers, loads DIR with
AutoModelForCausalLM/AutoTokenizer, applies the chat template and streams greedy
tokens to stdout through a TextStreamer (bench/_seed_style.py), paying start-up and
model load every time, as `inference_llm.py --prompt` does.

axchat: one daemon is started on DIR before the runs (private socket directory), and
each run is one `axchat ask --ignore-eos` process against it.

Both sides generate exactly --max-tokens greedy tokens for the same chat-templated
prompt (min_new_tokens=max_new_tokens on the seed side, --ignore-eos on ours), with
the daemon's dtype on both sides unless --seed-dtype says otherwise.

Every process is timed from just before it is started to its exit (wall), and to the
first bytes it writes on stdout (first token): both programs write nothing on stdout
but generated text. One untimed warm-up of each comes first; the runs are interleaved
(seed, ask, ask --max-tokens 1) so drift hits all sides alike; medians are reported.

Prints ONE JSON object on stdout; progress goes to stderr. Any failure exits 1 with a
message on stderr. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import BenchError, Daemon, Log, bench_env, cpus_busy, loadavg, machine, run_main, tail

HERE = Path(__file__).resolve().parent
SEED_SCRIPT = HERE / "_seed_style.py"
PHASES_TAG = "ONESHOT_PHASES "  # same as bench/_seed_style.py
DEFAULT_PROMPT = "Explain in two sentences why the sky is blue."

STATUS_TIMEOUT_S = 30.0

log = Log("oneshot")


# ---------------------------------------------------------------- processes


@dataclass
class Run:
    wall_s: float
    first_s: float | None  # first non-empty stdout chunk, from start; None if none came
    stdout: bytes
    stderr: str


def timed_run(cmd: list[str], env: dict[str, str], timeout_s: float, what: str) -> Run:
    """Run cmd to completion; time its exit and its first stdout bytes. Raises BenchError
    on a non-zero exit or when it outlives timeout_s (it is killed then)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        env = dict(env, ONESHOT_T0=repr(t0))
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env, bufsize=0)
        except OSError as exc:
            raise BenchError(f"{what}: cannot start {cmd[0]}: {exc}") from None
        deadline = t0 + timeout_s
        first: float | None = None
        chunks: list[bytes] = []
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise subprocess.TimeoutExpired(cmd, timeout_s)
                ready, _, _ = select.select([fd], [], [], remaining)
                if not ready:
                    continue  # the loop re-checks the deadline
                chunk = os.read(fd, 65536)
                if not chunk:
                    break  # EOF: the process closed stdout (normally: it exited)
                if first is None:
                    first = time.monotonic() - t0
                chunks.append(chunk)
            proc.wait(timeout=max(0.01, deadline - time.monotonic()))
            wall = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            err.seek(0)
            raise BenchError(
                f"{what}: still running after {timeout_s:.0f}s; killed it. Its stderr ends:\n"
                + tail(err.read().decode(errors="replace"))
            ) from None
        finally:
            if proc.poll() is None:  # KeyboardInterrupt or any other escape
                proc.kill()
                proc.wait(timeout=10)
            proc.stdout.close()  # type: ignore[union-attr]
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"{what}: exited with status {proc.returncode}. Its stderr ends:\n" + tail(stderr))
    return Run(wall_s=wall, first_s=first, stdout=b"".join(chunks), stderr=stderr)


# ---------------------------------------------------------------- helpers


def ask_command(python: str) -> list[str]:
    """The `axchat` console script installed beside this Python, else `python -m axchat`."""
    script = Path(python).parent / "axchat"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [python, "-m", "axchat"]


def model_shape(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read {model_dir / 'config.json'}: {exc}") from None
    return {
        "hidden_size": config.get("hidden_size"),
        "num_hidden_layers": config.get("num_hidden_layers"),
        "vocab_size": config.get("vocab_size"),
        "dtype": config.get("dtype", config.get("torch_dtype")),
    }


def _load1() -> float | None:
    """1-minute load average: other work on the machine makes every figure noisier."""
    avg = loadavg()
    return avg[0] if avg else None


def _notes(phases: dict[str, Any], busy_start: float | None, nproc: int, spreads: dict[str, list[float]]) -> list[str]:
    """Caveats a reader of the figures should know, found in this run."""
    notes = []
    index = phases.get("first_text_token_index")
    if index is None:
        notes.append(
            "no generated token decodes to visible text (random weights, vocabulary larger than the "
            f"tokenizer's {phases.get('tokenizer_size')}): the first-token times measure the final newline, i.e. the whole answer"
        )
    elif index > 0:
        notes.append(f"the first visible text is generated token #{index} (0-based): first-token times include that many tokens")
    if busy_start is not None and busy_start > 0.25:
        notes.append(
            f"other processes kept {busy_start} of {nproc} CPUs busy just before the bench started: "
            "absolute times are noisy; compare ratios, and look at the per-run lists"
        )
    for name, values in spreads.items():
        if min(values) > 0 and max(values) / min(values) > 1.5:
            notes.append(
                f"{name} runs vary {max(values) / min(values):.1f}x (slowest/fastest): something else was "
                "competing for the CPUs; the medians hide it, the per-run lists show it"
            )
    return notes


def seed_phases(stderr: str) -> dict[str, Any]:
    for line in stderr.splitlines():
        if line.startswith(PHASES_TAG):
            return json.loads(line[len(PHASES_TAG):])
    raise BenchError("seed-style run printed no timing line on stderr. Its stderr ends:\n" + tail(stderr))


def med(values: list[float]) -> float:
    return statistics.median(values)


def r4(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


# ---------------------------------------------------------------- the bench


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/oneshot.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="local model directory (config.json, weights, tokenizer)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of each side (default 5)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens generated per run (default 32)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument(
        "--seed-dtype",
        default="match",
        choices=["match", "auto", "float32", "bfloat16", "float16"],
        help="dtype of the seed-style model: match = the daemon's (default); auto = from_pretrained's own choice",
    )
    p.add_argument("--seed-threads", type=int, help="torch threads in the seed-style process (default: torch's choice)")
    p.add_argument("--serve-arg", action="append", default=[], help="extra `axchat serve` argument (repeatable; e.g. --serve-arg=--threads=2)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one measured process may take (default 600)")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds the daemon may take to get ready (default 600)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.max_tokens < 1:
        p.error("--max-tokens must be at least 1")
    return args


def bench(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = Path(args.model).expanduser().resolve()
    if not model_dir.is_dir():
        raise BenchError(f"--model {args.model}: no such directory")
    shape = model_shape(model_dir)
    python = sys.executable
    env = bench_env()
    ask = ask_command(python)
    n, runs, timeout = args.max_tokens, args.runs, args.timeout
    load_start = _load1()
    busy_start = cpus_busy()

    daemon = Daemon(str(model_dir), args.serve_arg, log)
    try:
        daemon.start(args.ready_timeout)
        status_run = timed_run([*ask, "status", "--socket", daemon.socket, "--json"], env, STATUS_TIMEOUT_S, "axchat status")
        try:
            status = json.loads(status_run.stdout)
        except ValueError:
            raise BenchError(f"axchat status --json printed no JSON: {status_run.stdout[:200]!r}") from None
        daemon_threads = daemon.threads()

        seed_dtype = status["dtype"] if args.seed_dtype == "match" else args.seed_dtype
        if seed_dtype not in ("auto", "float32", "bfloat16", "float16"):
            seed_dtype = "auto"  # a GGUF weight type (llama.cpp): the seed loads as from_pretrained chooses
        seed_cmd = [python, str(SEED_SCRIPT), "--model", str(model_dir), f"--prompt={args.prompt}", "--max-tokens", str(n), "--dtype", seed_dtype]
        if args.seed_threads:
            seed_cmd += ["--threads", str(args.seed_threads)]
        ask_cmd = [*ask, "ask", "--socket", daemon.socket, "--max-tokens", str(n), "--ignore-eos", "--", args.prompt]
        cold_cmd = [*ask, "ask", "--socket", daemon.socket, "--max-tokens", "1", "--ignore-eos", "--", args.prompt]
        bare_cmd = [python, "-c", "pass"]

        def seed_run(label: str) -> tuple[Run, dict[str, Any]]:
            run = timed_run(seed_cmd, env, timeout, f"seed-style run {label}")
            phases = seed_phases(run.stderr)
            if phases["new_tokens"] != n:
                raise BenchError(f"seed-style run {label} generated {phases['new_tokens']} tokens, not {n}")
            if run.first_s is None:
                raise BenchError(f"seed-style run {label} printed nothing on stdout")
            return run, phases

        def ask_run(cmd: list[str], label: str) -> Run:
            run = timed_run(cmd, env, timeout, f"axchat ask run {label}")
            if run.first_s is None:
                raise BenchError(f"axchat ask run {label} printed nothing on stdout")
            return run

        log("warm-up (untimed): seed style, axchat ask, axchat ask --max-tokens 1, python -c pass")
        seed_run("warm-up")
        ask_run(ask_cmd, "warm-up")
        ask_run(cold_cmd, "warm-up (--max-tokens 1)")
        timed_run(bare_cmd, env, timeout, "python -c pass")

        seed_wall: list[float] = []
        seed_first: list[float] = []
        seed_ph: list[dict[str, Any]] = []
        ask_wall: list[float] = []
        ask_first: list[float] = []
        cold_wall: list[float] = []
        bare_wall: list[float] = []
        for i in range(1, runs + 1):
            s, ph = seed_run(f"{i}/{runs}")
            a = ask_run(ask_cmd, f"{i}/{runs}")
            c = ask_run(cold_cmd, f"{i}/{runs} (--max-tokens 1)")
            b = timed_run(bare_cmd, env, timeout, "python -c pass")
            seed_wall.append(s.wall_s)
            seed_first.append(s.first_s)  # type: ignore[arg-type]
            seed_ph.append(ph)
            ask_wall.append(a.wall_s)
            ask_first.append(a.first_s)  # type: ignore[arg-type]
            cold_wall.append(c.wall_s)
            bare_wall.append(b.wall_s)
            log(
                f"run {i}/{runs}: seed style {s.wall_s:.3f}s (first text {s.first_s:.3f}s), "
                f"ask {a.wall_s:.3f}s (first text {a.first_s:.3f}s), ask --max-tokens 1 {c.wall_s * 1e3:.0f}ms"
            )

        # One more ask, untimed, in --json: check the token count and compare the tokens.
        check = timed_run([*ask, "ask", "--socket", daemon.socket, "--max-tokens", str(n), "--ignore-eos", "--json", "--", args.prompt], env, timeout, "axchat ask --json (check)")
        events = [json.loads(line) for line in check.stdout.decode().splitlines() if line.strip()]
        done = next((e for e in events if e.get("type") == "done"), None)
        if done is None:
            raise BenchError(f"axchat ask --json ended without a done event: {check.stdout[-300:]!r}")
        if done["usage"]["completion_tokens"] != n:
            raise BenchError(f"axchat ask generated {done['usage']['completion_tokens']} tokens, not {n}")
        ask_ids = [t for e in events if e.get("type") == "delta" for t in e["token_ids"]]
        seed_ids = seed_ph[-1]["new_token_ids"]
    finally:
        warnings = daemon.finish()

    seed_s, ask_s = med(seed_wall), med(ask_wall)
    notes = _notes(seed_ph[-1], busy_start, machine()["nproc"] or 1, {"seed_style": seed_wall, "ask_warm": ask_wall})
    seed_ft, ask_ft = med(seed_first), med(ask_first)
    phase_keys = ("python_start_s", "import_s", "load_s", "generate_s")
    return {
        "seed_style_s": r4(seed_s),
        "ask_warm_s": r4(ask_s),
        "ratio": round(seed_s / ask_s, 2),
        "seed_style_first_token_s": r4(seed_ft),
        "ask_first_token_s": r4(ask_ft),
        "first_token_ratio": round(seed_ft / ask_ft, 2),
        "ask_cold_start_ms": round(med(cold_wall) * 1e3, 1),
        "python_bare_start_ms": round(med(bare_wall) * 1e3, 1),
        "seed_style_phases_s": {k: r4(med([p[k] for p in seed_ph])) for k in phase_keys},
        "daemon_ready_s": r4(daemon.ready_s),
        "daemon_request_stats_ms": {k: done["stats"][k] for k in ("tokenize_ms", "queue_ms", "prefill_ms", "ttft_ms", "generate_ms")},
        "tokens_match": ask_ids == seed_ids,
        "first_text_token_index": seed_ph[-1]["first_text_token_index"],
        "tokenizer_size": seed_ph[-1]["tokenizer_size"],
        "runs": runs,
        "max_tokens": n,
        "prompt": args.prompt,
        "model": str(model_dir),
        "model_shape": shape,
        "dtype": {"seed_style": seed_ph[-1]["dtype"], "daemon": status["dtype"]},
        "device": {"seed_style": "cpu", "daemon": status["device"]},
        "torch_threads": {"seed_style": seed_ph[-1]["torch_threads"], "daemon": daemon_threads},
        "python": platform.python_version(),
        "torch": seed_ph[-1]["torch"],
        "transformers": seed_ph[-1]["transformers"],
        "machine": {**machine(), "cpus_busy_before": busy_start, "loadavg_1m_start": load_start, "loadavg_1m_end": _load1()},
        "ask_command": " ".join(ask),
        "daemon_log_warnings": warnings,
        "notes": notes,
        "seed_style_runs_s": [r4(x) for x in seed_wall],
        "ask_warm_runs_s": [r4(x) for x in ask_wall],
        "seed_style_first_token_runs_s": [r4(x) for x in seed_first],
        "ask_first_token_runs_s": [r4(x) for x in ask_first],
        "ask_cold_start_runs_ms": [round(x * 1e3, 1) for x in cold_wall],
        "python_bare_start_runs_ms": [round(x * 1e3, 1) for x in bare_wall],
    }


def main(argv: list[str] | None = None) -> int:
    return run_main("oneshot", bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
