"""A misbehaving daemon, as a real subprocess: `python tests/problemdaemon.py SOCKET`.

What it does wrong is steered by `$AXCHAT_PROBLEM`:

* `die_on_generate`: answers `hello` like a daemon, then dies (no reply, no cleanup,
  its socket file left behind) as soon as a `generate` arrives.
* `wrong_pid`: answers `hello` and `status` like a daemon, but its status names
  `$AXCHAT_PROBLEM_PID` as its pid, not its own.

It prints `listening` on stdout once bound, so a test can wait for that line.
"""

from __future__ import annotations

import os
import sys

import zmq

from axchat.protocol import v1


def main() -> None:
    problem = os.environ.get("AXCHAT_PROBLEM", "")
    if problem not in ("die_on_generate", "wrong_pid"):
        raise SystemExit(f"unknown AXCHAT_PROBLEM {problem!r}")
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("ipc://" + sys.argv[1])
    print("listening", flush=True)
    while True:
        if not router.poll(60_000):
            os._exit(4)  # nobody came: do not linger after a broken test
        identity, raw_env, raw_body = router.recv_multipart()
        env = v1.decode_envelope(raw_env)
        body = v1.decode_client_body(raw_body)
        if isinstance(body, v1.Generate):
            os._exit(3)  # as a SIGKILL would: the connection drops mid-request
        reply: v1.Welcome | v1.StatusReply = v1.Welcome(
            protocol=v1.PROTOCOL_VERSION, server_version="0", model="problem", backend="none",
            device="none", dtype="none", context_length=2048, max_frame_bytes=v1.DEFAULT_MAX_FRAME_BYTES,
        )  # fmt: skip
        if isinstance(body, v1.Status):
            reply = v1.StatusReply(
                state=v1.DaemonState.SERVING, model="problem", backend="none", device="none", dtype="none",
                context_length=2048, uptime_s=1.0, running=0, queued=0, kv_sequences=0, requests_total=0,
                completion_tokens_total=0, cpu_percent=0.0, rss_bytes=0, pid=int(os.environ["AXCHAT_PROBLEM_PID"]),
            )  # fmt: skip
        router.send_multipart([identity, *v1.encode(env, reply)])


if __name__ == "__main__":
    main()
