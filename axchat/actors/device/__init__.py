"""The device: one actor per device that owns its backend and runs every request's
forward passes. Modules, by job:

- `sequence`: one request as the device sees it (its state, what it has fed).
- `fair_queue`: the waiting line, round-robin across clients.
- `planner`: the schedule as a pure function (which sequences decode, which prompt
  pieces go in and how, who is admitted); `prompt_chunks` sizes long prompts' chunks.
- `clock`: what decode steps cost, and what the daemon adds between them.
- `device_thread`: the one thread that calls the backend, and the readings taken there.
- `residency`: keep-alive (unloading the idle model, loading it again).
- `burst`: an announced burst of prompts, as an idle device waits for it.
- `peers`: the actors a device talks to (a placer in front, with several devices).
- `actor`: the mailbox that runs the planner's steps on the device thread.

Nothing is imported here, so the planner loads without the actor (or torch)."""
