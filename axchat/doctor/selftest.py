"""The engine self-test: each weight type in its own child process (`selftest_child`),
f32 first as the reference. A type passes when its child exits cleanly, every logit is
finite, and its next-token choices agree with f32's often enough.

The agreement floors come from measurement on axchat-mini (`axchat doctor --json`
prints the figures): they sit under what a sound build gives and far above what broken
kernels give (random logits would agree on about 1 position in 2,000)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from axchat import exit_status

WEIGHT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_k_m")
CHILD = (sys.executable, "-m", "axchat.doctor.selftest_child")
# Fraction of teacher-forced positions where a type picks f32's token (about 45 of them).
# Measured on axchat-mini with sound builds, native (AVX-512) and portable (AVX2) alike
# (`axchat doctor --json` prints the figures): f16, bf16 and q8_0 100%, q4_k_m 98%. Each floor leaves room
# for a few near-ties to flip; broken kernels agree on next to nothing.
AGREEMENT_FLOOR = {"f32": 1.0, "f16": 0.95, "bf16": 0.9, "q8_0": 0.95, "q4_k_m": 0.8}
TIMEOUT_S = 300.0  # a first run converts and quantizes the model too


@dataclass(frozen=True)
class TypeResult:
    kind: str
    passed: bool
    detail: str  # "ok", or why not in one phrase
    crashed: bool = False
    agreement: float | None = None
    decode_tok_s: float | None = None
    system_info: str = ""


def run_type(
    kind: str, reference: dict[str, object] | None, child: tuple[str, ...] = CHILD, timeout_s: float = TIMEOUT_S
) -> tuple[TypeResult, dict[str, object] | None]:
    """One weight type in a child: its result, and the child's raw report (the f32 one
    is the others' reference)."""
    try:
        done = subprocess.run(
            [*child, kind],
            input=json.dumps(reference) if reference else "",
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return TypeResult(kind, False, f"did not finish within {timeout_s:.0f}s"), None
    if done.returncode != 0:
        crashed = exit_status.crashed(done.returncode)
        why = exit_status.describe(done.returncode, f"running {kind}")
        last = [line for line in done.stderr.strip().splitlines() if line.strip()]
        if not crashed and last:
            why += f": {last[-1].strip()}"
        return TypeResult(kind, False, why, crashed=crashed), None
    try:
        report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return TypeResult(kind, False, "the child printed no result"), None
    agreement = float(report["agreement"])  # type: ignore[arg-type]
    tok_s = float(report["decode_tok_s"])  # type: ignore[arg-type]
    info = str(report.get("system_info", ""))
    if not report.get("finite"):
        return TypeResult(kind, False, "logits that are not finite (NaN or infinity)", False, agreement, tok_s, info), report
    floor = AGREEMENT_FLOOR[kind]
    if reference is not None and agreement < floor:
        detail = f"picks f32's token at {agreement:.0%} of positions (at least {floor:.0%} expected)"
        return TypeResult(kind, False, detail, False, agreement, tok_s, info), report
    return TypeResult(kind, True, "ok", False, agreement, tok_s, info), report


def run_all(kinds: tuple[str, ...] = WEIGHT_TYPES, child: tuple[str, ...] = CHILD) -> list[TypeResult]:
    """Every type, f32 first; without a sound f32 the others are judged on crashes and
    finite logits alone, and say so."""
    first, reference = run_type("f32", None, child)
    if not first.passed:
        reference = None
    results = [first] if "f32" in kinds else []
    for kind in kinds:
        if kind == "f32":
            continue
        result, _ = run_type(kind, reference, child)
        if reference is None and result.passed:
            result = TypeResult(kind, True, "ok (no f32 reference to compare with)", False, None, result.decode_tok_s, result.system_info)
        results.append(result)
    return results


def summary(results: list[TypeResult]) -> str:
    """One line: "f32 ok, f16 ok, q8_0 crashed: segmentation fault ..."."""
    return "; ".join(f"{r.kind} {r.detail}" for r in results)
