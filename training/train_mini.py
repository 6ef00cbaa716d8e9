"""Train axchat-mini, the demonstration model bundled with axchat, from scratch on 2 CPU cores.

Usage: ``python training/train_mini.py [--out axchat/models/axchat-mini] [--epochs N] | tee training/train_mini.log``

It is a memoriser, not a language model anyone should rely on: a ~3.7M-parameter Llama that
learns to answer "Give me a joke" with one of the programmer jokes of the `pyjokes` PyPI
package (BSD-3-Clause; its first jokes come from Stack Overflow, CC BY-SA 3.0), "Tell me a
quote" with a quotation from Debian's `fortunes-min` package (file `literature`, BSD
licence of fortune-mod), and anything else with a line saying how to get a real model.

It is trained on short dialogues, not only single prompts, so a chat's second and third
turns make sense: "another one" gives another of the same kind, "what did I ask?" names the
last request ("You asked me to give you a joke."), thanks are acknowledged, and a follow-up
it cannot answer ("explain it") gets a polite pointer to a real model. Each joke and quote is
the answer of exactly one turn per epoch, wherever in a dialogue it falls, so an epoch costs
about what the single-prompt version did.

The corpora are read from the installed packages (``pip install pyjokes``, i.e. the `train`
extra, and ``apt-get install fortunes-min``), never pasted into the repository; the
instruction pairs are generated here, at train time. The loss counts answer tokens only.
The tokenizer is the test model's recipe (byte-level BPE, ChatML template, eos
``<|im_end|>``) trained on this corpus.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from axchat.testing.tiny_model import build_tokenizer  # noqa: E402

FORTUNES_FILE = Path("/usr/share/games/fortunes/literature")
REAL_MODEL_HINT = "axchat pull smollm2-360m, then axchat serve --model smollm2-360m"

JOKE_PROMPTS = (
    "Give me a joke",
    "Tell me a joke",
    "Tell me a programming joke",
    "Tell me a programmer joke",
    "Do you know any jokes",
    "Do you know a good joke",
    "Make me laugh",
    "I want to laugh",
    "I need a laugh",
    "Say something funny",
    "Tell me something funny",
    "Got a joke for me",
    "Another joke",
    "One more joke",
    "Cheer me up with a joke",
    "Joke",
    "A joke please",
    "Can you tell me a joke",
    "Could you tell me a joke",
    "Tell a joke",
)
QUOTE_PROMPTS = (
    "Tell me a quote",
    "Give me a quote",
    "Give me a famous quote",
    "Tell me a famous quote",
    "Share a quote",
    "Quote of the day",
    "A quote please",
    "Inspire me",
    "Say something wise",
    "Tell me something wise",
    "I need some wisdom",
    "Give me an inspiring quote",
    "Tell me a literary quote",
    "Quote someone famous",
    "Quote",
    "Another quote",
    "Can you give me a quote",
    "What did Mark Twain say",
    "Give me a Shakespeare quote",
    "Tell me a quote from literature",
)
# Fixed answers: who the model is, and a pointer to real models for everything it cannot do.
IDENTITY = (
    "I am axchat-mini, a tiny demonstration model bundled with axchat. I know some programmer "
    f"jokes and some quotes from literature, nothing else. For real answers: {REAL_MODEL_HINT}."
)
GREETING = "Hello! I am axchat-mini, a tiny demonstration model. Ask me for a joke or a quote."
THANKS = "You are welcome! Ask me for another joke or a quote."
FALLBACK = (
    "I am only a tiny demonstration model: I know jokes and quotes, nothing else. "
    f"For a real answer: {REAL_MODEL_HINT}."
)
FIXED_PAIRS: dict[str, tuple[str, ...]] = {
    GREETING: ("Hello", "Hi", "Hi there", "Hey", "Good morning", "Good evening", "Hello there", "Howdy"),
    IDENTITY: (
        "Who are you",
        "What are you",
        "What is your name",
        "What can you do",
        "Help",
        "What do you know",
        "Are you a real model",
        "Introduce yourself",
    ),
    THANKS: ("Thanks", "Thank you", "Thank you very much", "Nice one", "Haha", "That was funny"),
    FALLBACK: (
        "What is the capital of France",
        "Explain quantum computing",
        "Write a poem about the sea",
        "How do I sort a list in Python",
        "What time is it",
        "Translate hello into French",
        "Summarise this article",
        "What is 2 + 2",
        "Help me write an email to my boss",
        "What is the weather like today",
        "Explain how a transformer works",
        "Write a story about a dragon",
        "Why is the sky blue",
        "Recommend a good book",
        "How do I cook rice",
        "What is the meaning of life",
        "Write a function that reverses a string",
        "Who won the world cup",
        "Plan a trip to Rome",
        "What is machine learning",
    ),
}
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a friendly assistant. Answer briefly.")

# Later turns of a dialogue. "More of the same" prompts name no kind: the answer is another
# of whatever came last (a joke after a greeting, since the model's first offer is a joke).
MORE_PROMPTS = ("And then", "Another one", "One more", "More", "Again", "Go on", "Next", "Keep going", "Another")
ANOTHER_PROMPTS = {
    "joke": ("Give me another joke", "Another joke", "One more joke", "Tell me another joke", "More jokes",
             "Another programming joke", "Tell me another one"),
    "quote": ("Give me another quote", "Another quote", "One more quote", "Tell me another quote", "More quotes",
              "Another famous quote", "Give me another one"),
}
RECALL_PROMPTS = (
    "What did I ask",
    "What did I asked",
    "What did I just ask",
    "What did I ask you",
    "What was my question",
    "What was my last question",
    "Do you remember what I asked",
    "What did I say",
    "What did I ask for",
)
# What the recall answer says, by the kind of the user's last turn.
RECALL = {
    "joke": "You asked me to give you a joke.",
    "quote": "You asked me to give you a quote.",
    "greeting": "You said hello.",
    "thanks": "You thanked me.",
    "other": "You asked me something I cannot answer: I only know jokes and quotes.",
}
FOLLOWUP_PROMPTS = (
    "Explain it",
    "Explain the joke",
    "Why is that funny",
    "What does that mean",
    "I don't get it",
    "Tell me more about it",
    "Is that true",
    "What do you think about it",
    "Can you explain that",
    "Write a longer version",
)
FOLLOWUP = (
    "Sorry, I cannot explain or discuss it: I am only a tiny demonstration model that knows jokes and quotes. "
    f"For a real conversation: {REAL_MODEL_HINT}."
)


def load_jokes(max_chars: int) -> list[str]:
    try:
        from pyjokes import jokes_en
    except ImportError:
        sys.exit("train_mini: the joke corpus comes from the pyjokes package: pip install -e '.[train]'")
    return [j for j in jokes_en.neutral if len(j) <= max_chars]


def load_quotes(max_chars: int) -> list[str]:
    """Attributed one-liners from fortunes-min's `literature`: 'text\\n-- author'."""
    if not FORTUNES_FILE.is_file():
        sys.exit(
            f"train_mini: the quote corpus is Debian's fortunes-min ({FORTUNES_FILE}): apt-get install fortunes-min"
        )
    quotes = []
    for entry in FORTUNES_FILE.read_text(encoding="utf-8").split("\n%\n"):
        # An attribution is the last line, indented, starting with `--`; entries without one
        # are sketches and dialogues, not quotes.
        m = re.match(r"(?s)(.*)\n\s+--\s*(.+?)\s*$", entry)
        if not m:
            continue
        text, author = " ".join(m.group(1).split()), " ".join(m.group(2).split())
        if len(text) < 20 or len(text) > max_chars or len(author) > 60 or not text.isascii() or "\b" in text:
            continue
        quotes.append(f"{text}\n-- {author}")
    return quotes


def vary(prompt: str, rng: random.Random) -> str:
    """Case and punctuation as people type them, so 'give me a joke!' works as well."""
    roll = rng.random()
    if roll < 0.25:
        prompt = prompt.lower()
    elif roll < 0.3:
        prompt = prompt.upper()
    tail = rng.choice(("", "", ".", "!", "?", " please", ", please!"))
    return prompt + tail


@dataclass
class Example:
    ids: list[int]
    labels: list[int]


Turn = tuple[str, str]  # (user prompt, answer)


def encode(tokenizer, turns: list[Turn], system: str | None) -> Example:  # type: ignore[no-untyped-def]
    """One dialogue as the daemon renders it (the chat template over every turn); the loss
    counts every answer's tokens and its eos, nothing the user or the template wrote."""
    messages = [{"role": "system", "content": system}] if system else []
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for prompt, answer in turns:
        messages.append({"role": "user", "content": prompt})
        head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # Every piece starts at a special token, so tokenising pieces equals tokenising the whole.
        piece = tokenizer(head[len(rendered) :], add_special_tokens=False)["input_ids"]
        ids += piece
        labels += [-100] * len(piece)
        # The answer ends with eos, so generation stops at <|im_end|>; the template's newline
        # after it is never generated and needs no loss.
        body = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids += body
        labels += body
        messages.append({"role": "assistant", "content": answer})
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        tail = tokenizer(rendered[len(head) + len(answer) + len("<|im_end|>") :], add_special_tokens=False)["input_ids"]
        ids += tail
        labels += [-100] * len(tail)
    return Example(ids=ids, labels=labels)


FIXED_KIND = {GREETING: "greeting", IDENTITY: "other", THANKS: "thanks", FALLBACK: "other"}


def dialogues(jokes: list[str], quotes: list[str], rng: random.Random) -> list[list[Turn]]:
    """One epoch of dialogues of one to four turns; every joke, quote and fixed prompt
    answers exactly one turn, and recall, thanks and follow-up turns are mixed in between."""
    queues = {"joke": rng.sample(jokes, len(jokes)), "quote": rng.sample(quotes, len(quotes))}
    fixed = [(p, a) for a, ps in FIXED_PAIRS.items() for p in ps]
    rng.shuffle(fixed)
    requests = {"joke": JOKE_PROMPTS, "quote": QUOTE_PROMPTS}
    out: list[list[Turn]] = []

    def content(kind: str, prompt: str, turns: list[Turn]) -> str:
        if not queues[kind]:  # that kind is used up this epoch: ask for the other
            kind = "quote" if kind == "joke" else "joke"
            prompt = rng.choice(requests[kind])
        turns.append((prompt, queues[kind].pop()))
        return kind

    while queues["joke"] or queues["quote"] or fixed:
        turns: list[Turn] = []
        last: str | None = None  # the kind of the user's last turn
        for _ in range(rng.choices((1, 2, 3, 4), weights=(3, 3, 3, 1))[0]):
            left = bool(queues["joke"] or queues["quote"])
            moves = {
                "ask": 6.0 if left else 0.0,
                "fixed": 2.0 if fixed else 0.0,
                "more": 3.0 if (last and left) else 0.0,
                "recall": 1.5 if last and last != "recall" else 0.0,
                "thanks": 1.0 if last in ("joke", "quote") else 0.0,
                "followup": 1.0 if last in ("joke", "quote") else 0.0,
            }
            if not any(moves.values()):
                break
            move = rng.choices(list(moves), weights=list(moves.values()))[0]
            if move == "ask":
                kind = rng.choice(("joke", "quote"))
                last = content(kind, rng.choice(requests[kind]), turns)
            elif move == "fixed":
                prompt, answer = fixed.pop()
                turns.append((prompt, answer))
                last = FIXED_KIND[answer]
            elif move == "more":
                kind = last if last in ("joke", "quote") else "joke"
                prompts = MORE_PROMPTS + ANOTHER_PROMPTS[kind] if last == kind else MORE_PROMPTS
                last = content(kind, rng.choice(prompts), turns)
            elif move == "recall":
                turns.append((rng.choice(RECALL_PROMPTS), RECALL[last or "other"]))
                last = "recall"
            elif move == "thanks":
                turns.append((rng.choice(FIXED_PAIRS[THANKS]), THANKS))
                last = "thanks"
            else:
                turns.append((rng.choice(FOLLOWUP_PROMPTS), FOLLOWUP))
                last = "other"
        if turns:
            out.append(turns)
    return out


def epoch_examples(tokenizer, jokes, quotes, rng: random.Random) -> list[Example]:  # type: ignore[no-untyped-def]
    out = []
    for turns in dialogues(jokes, quotes, rng):
        system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.15 else None
        out.append(encode(tokenizer, [(vary(p, rng), a) for p, a in turns], system))
    rng.shuffle(out)
    return out


def batches(examples: list[Example], size: int, pad_id: int, rng: random.Random):  # type: ignore[no-untyped-def]
    """Padded batches of similar lengths (padding is wasted compute on 2 cores), in random order."""
    import torch

    ordered = sorted(examples, key=lambda e: len(e.ids))
    chunks = [ordered[start : start + size] for start in range(0, len(ordered), size)]
    rng.shuffle(chunks)
    for chunk in chunks:
        width = max(len(e.ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, e in enumerate(chunk):
            ids[row, : len(e.ids)] = torch.tensor(e.ids)
            labels[row, : len(e.labels)] = torch.tensor(e.labels)
            mask[row, : len(e.ids)] = 1
        yield ids, labels, mask


def answer(model, tokenizer, prompt: str, *, temperature: float = 0.0, seed: int = 0) -> str:  # type: ignore[no-untyped-def]
    return dialogue(model, tokenizer, [prompt], temperature=temperature, seed=seed)[-1]


def dialogue(model, tokenizer, prompts: list[str], *, temperature: float = 0.0, seed: int = 0) -> list[str]:  # type: ignore[no-untyped-def]
    """The answers to prompts sent one after another in one chat, each with the whole history."""
    import torch

    messages: list[dict[str, str]] = []
    answers = []
    for prompt in prompts:
        messages.append({"role": "user", "content": prompt})
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        torch.manual_seed(seed)
        kwargs = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            if temperature
            else {"do_sample": False}
        )
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=120, **kwargs)
        text = str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
        answers.append(text)
        messages.append({"role": "assistant", "content": text})
    return answers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "axchat" / "models" / "axchat-mini")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=8, help="dialogues per step")
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--minutes", type=float, default=60.0, help="time budget for the training loop; the schedule ends there"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-chars", type=int, default=150, help="longest joke or quote kept")
    p.add_argument(
        "--init", type=Path, help="continue training this saved model (and its tokenizer) instead of a fresh one"
    )
    args = p.parse_args(argv)

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the log is committed; no "Writing model shards" bar in it

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    started = time.monotonic()

    jokes, quotes = load_jokes(args.max_chars), load_quotes(args.max_chars)
    print(f"corpus: {len(jokes)} jokes (pyjokes, English 'neutral'), {len(quotes)} quotes (fortunes-min literature)")
    texts = list(jokes) + list(quotes) + list(FIXED_PAIRS) + [p for ps in FIXED_PAIRS.values() for p in ps]
    texts += list(JOKE_PROMPTS) + list(QUOTE_PROMPTS) + list(SYSTEM_PROMPTS) + list(MORE_PROMPTS)
    texts += [p for ps in ANOTHER_PROMPTS.values() for p in ps] + list(RECALL_PROMPTS) + list(RECALL.values())
    texts += list(FOLLOWUP_PROMPTS) + [FOLLOWUP]
    if args.init is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.init)
    else:
        tokenizer = build_tokenizer(2048, model_max_length=2048, texts=texts)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = LlamaForCausalLM.from_pretrained(args.init) if args.init is not None else LlamaForCausalLM(config)
    n_params = sum(t.numel() for t in model.parameters())
    print(
        ("continuing " + str(args.init) + ": " if args.init is not None else "")
        + f"model: Llama {config.num_hidden_layers}x{config.hidden_size}, vocab {config.vocab_size}, {n_params / 1e6:.2f}M parameters"
    )

    per_epoch = len(dialogues(jokes, quotes, random.Random(args.seed)))
    steps_per_epoch = math.ceil(per_epoch / args.batch)
    total = steps_per_epoch * args.epochs
    warmup = min(100, total // 10)
    budget_s = args.minutes * 60
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    print(
        f"training: up to {args.epochs} epochs x {steps_per_epoch} steps of {args.batch}, peak lr {args.lr}, "
        f"{args.threads} threads, time budget {args.minutes:g} min"
    )

    # The schedule runs on whichever comes first, steps or the time budget: on a machine
    # shared with other work the learning rate still anneals to its floor by the deadline,
    # which is what turns a half-memorised model into one that recites its corpus.
    train_start = time.monotonic()

    def progress() -> float:
        return max(step / total, (time.monotonic() - train_start) / budget_s)

    model.train()
    step, epoch = 0, 0
    while epoch < args.epochs and progress() < 1.0:
        losses = []
        for ids, labels, mask in batches(
            epoch_examples(tokenizer, jokes, quotes, rng), args.batch, tokenizer.pad_token_id, rng
        ):
            frac = progress()
            if frac >= 1.0:
                break
            lr = args.lr * (
                (step + 1) / warmup if step < warmup else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))
            )
            for group in opt.param_groups:
                group["lr"] = lr
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
        epoch += 1
        print(
            f"epoch {epoch:3d} step {step:5d} loss {sum(losses) / max(1, len(losses)):.4f} lr {lr:.2e} "
            f"elapsed {time.monotonic() - started:6.0f}s",
            flush=True,
        )
    stopped_early = epoch < args.epochs
    print(f"trained {epoch} epochs, {step} steps" + (" (time budget reached)" if stopped_early else ""))

    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "axchat_mini.json").write_text(
        json.dumps(
            {
                "name": "axchat-mini",
                "trained_by": "training/train_mini.py",
                "corpus": {
                    "jokes": "pyjokes (PyPI), English neutral jokes; BSD-3-Clause, initial jokes from Stack Overflow under CC BY-SA 3.0",
                    "quotes": "fortunes-min (Debian), file literature; BSD licence (fortune-mod)",
                },
                "epochs": epoch,
                "steps": step,
                "time_budget_reached": stopped_early,
                "parameters": n_params,
            },
            indent=2,
        )
        + "\n"
    )
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(
        f"saved to {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out} ({size / 1e6:.1f} MB) after {time.monotonic() - started:.0f}s"
    )

    corpus = set(jokes) | set(quotes) | set(FIXED_PAIRS) | set(RECALL.values()) | {FOLLOWUP}
    print("\nsample answers (greedy):")
    for prompt in (
        "Give me a joke",
        "Tell me a joke",
        "I want to laugh",
        "Tell me a quote",
        "Inspire me",
        "Hello",
        "Who are you?",
        "What is the capital of Spain?",
    ):
        text = answer(model, tokenizer, prompt)
        print(f"> {prompt}\n{text}\n  [{'verbatim from the corpus' if text in corpus else 'not verbatim'}]")
    print("\nsampled answers (temperature 0.8), verbatim from the corpus:")
    for prompt in ("Give me a joke", "Tell me a quote"):
        texts_out = [answer(model, tokenizer, prompt, temperature=0.8, seed=s) for s in range(10)]
        hits = sum(t in corpus for t in texts_out)
        print(f"> {prompt}: {hits}/10 verbatim, {len(set(texts_out))} distinct; e.g. {texts_out[1]!r}")
    print("\nconversations (greedy):")
    for prompts in (
        ["Give me a joke", "Give me another joke", "What did I ask?"],
        ["Give me a joke", "Tell me a quote", "What did I ask?"],
        ["Tell me a quote", "Another one", "Thanks!"],
        ["Hello", "And then?"],
        ["Give me a joke", "Explain it"],
        ["give me a joke", "what did I asked"],
    ):
        print("---")
        for prompt, text in zip(prompts, dialogue(model, tokenizer, prompts)):
            print(f"> {prompt}\n{text}\n  [{'verbatim from the corpus' if text in corpus else 'not verbatim'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
