// The chat page: keeps the conversation in the browser, streams each answer from
// /v1/chat/completions (fetch + SSE parsing), and stops it by aborting the fetch;
// the closed connection makes the bridge cancel the request on the daemon.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS = ["system", "temperature", "max-tokens", "api-key", "tools"];
const history = []; // {role, content, tool_calls?}, oldest first, as the API wants it
let running = null; // AbortController of the answer in progress

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// One id per tab, as the OpenAI `user` field: the daemon keeps this tab's cached
// conversation to itself and counts its requests apart from other people's.
function tabUser() {
  let id = sessionStorage.getItem("axchat-user");
  if (!id) {
    id = `tab-${crypto.getRandomValues(new Uint32Array(2)).join("-")}`;
    sessionStorage.setItem("axchat-user", id);
  }
  return id;
}

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = `message ${role}`;
  if (role === "assistant") el.innerHTML = axMarkdown.render(text);
  else el.textContent = text;
  $("conversation").append(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function setRunning(controller) {
  running = controller;
  $("send").hidden = controller !== null;
  $("stop").hidden = controller === null;
}

// Yields each parsed `data:` payload of an SSE response body.
async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    // The page has its own place for the key: say where, not which header to send.
    if (body.error?.code === "invalid_api_key") {
      return "this server needs an API key: enter it under Settings → API key";
    }
    return body.error?.message || response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// The tools setting, parsed; null when empty. Throws on text that is not a JSON list.
function offeredTools() {
  const text = $("tools").value.trim();
  if (!text) return null;
  const tools = JSON.parse(text);
  if (!Array.isArray(tools)) throw new Error("the tools setting must be a JSON list");
  return tools;
}

// Each call as `name(arguments)`, the arguments pretty-printed; set as text, never HTML.
function showToolCalls(bubble, calls) {
  for (const call of calls) {
    const box = document.createElement("div");
    box.className = "tool-call";
    const label = document.createElement("span");
    label.className = "muted";
    label.textContent = "tool call";
    const code = document.createElement("pre");
    let args = call.arguments;
    try {
      args = JSON.stringify(JSON.parse(call.arguments), null, 2);
    } catch {
      // shown as it came
    }
    code.textContent = `${call.name}(${args})`;
    box.append(label, code);
    bubble.append(box);
  }
}

async function send(prompt) {
  let tools;
  try {
    tools = offeredTools();
  } catch (err) {
    addMessage("error", `Error: tools: ${err.message}`);
    $("prompt").value = prompt;
    return;
  }
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  history.push({ role: "user", content: prompt });
  messages.push(...history);
  addMessage("user", prompt);
  const bubble = addMessage("assistant", "");
  const controller = new AbortController();
  setRunning(controller);
  $("status").textContent = "thinking…";
  let answer = "";
  let usage = null;
  let finish = null;
  const calls = []; // by index, reassembled from delta.tool_calls pieces
  const started = performance.now();
  let firstAt = null;
  // Deltas can come hundreds a second; rendering the whole answer's Markdown for each
  // would starve the page (the Stop button stops answering clicks). Render at most
  // once a frame, and once more at the end.
  let frame = 0; // a requested animation frame that will render, or 0
  const render = () => {
    frame = 0;
    bubble.innerHTML = axMarkdown.render(answer);
    bubble.scrollIntoView({ block: "end" });
  };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      signal: controller.signal,
      body: JSON.stringify({
        messages,
        temperature: Number($("temperature").value) || 0,
        max_tokens: Number($("max-tokens").value) || 256,
        stream: true,
        stream_options: { include_usage: true },
        user: tabUser(),
        ...(tools ? { tools } : {}),
      }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const chunk of sseEvents(response.body)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      if (choice.finish_reason) finish = choice.finish_reason;
      for (const piece of choice.delta?.tool_calls || []) {
        const call = (calls[piece.index] ??= { id: "", name: "", arguments: "" });
        call.id += piece.id || "";
        call.name += piece.function?.name || "";
        call.arguments += piece.function?.arguments || "";
      }
      if (choice.delta?.content) {
        if (firstAt === null) {
          firstAt = performance.now();
          $("status").textContent = "answering…";
        }
        answer += choice.delta.content;
        if (!frame) frame = requestAnimationFrame(render);
      }
    }
    $("status").textContent = "";
  } catch (err) {
    if (err.name === "AbortError") {
      $("status").textContent = "stopped";
      finish = "stopped";
    } else {
      history.pop(); // the question was not answered: give it back to the input
      bubble.remove();
      addMessage("error", `Error: ${err.message}`);
      $("prompt").value = prompt;
      $("status").textContent = "";
      return;
    }
  } finally {
    setRunning(null);
  }
  // The last render now, and none later: a queued one would wipe the stats added below.
  if (frame) cancelAnimationFrame(frame);
  render();
  showToolCalls(bubble, calls);
  const turn = { role: "assistant", content: answer };
  if (calls.length) {
    turn.tool_calls = calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
  }
  history.push(turn);
  const stats = document.createElement("span");
  stats.className = "stats muted";
  const seconds = (performance.now() - started) / 1000;
  const parts = [finish || "done"];
  if (firstAt !== null) parts.push(`first token ${((firstAt - started) / 1000).toFixed(2)}s`);
  if (usage) parts.push(`${usage.completion_tokens} tokens, ${(usage.completion_tokens / seconds).toFixed(1)} tokens/s`);
  stats.textContent = parts.join(" · ");
  bubble.append(stats);
}

async function showModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    $("model").textContent = body.data.map((m) => m.id).join(", ");
  } catch (err) {
    $("model").textContent = `(${err.message})`;
  }
}

function loadSettings() {
  for (const id of SETTINGS) {
    const saved = localStorage.getItem(`axchat.${id}`);
    if (saved !== null) $(id).value = saved;
    $(id).addEventListener("change", () => {
      localStorage.setItem(`axchat.${id}`, $(id).value);
      if (id === "api-key") showModel();
    });
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || running) return;
  $("prompt").value = "";
  send(prompt);
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => running?.abort());
$("new-chat").addEventListener("click", () => {
  running?.abort();
  history.length = 0;
  $("conversation").replaceChildren();
  $("status").textContent = "";
});
$("toggle-settings").addEventListener("click", () => {
  const panel = $("settings");
  panel.hidden = !panel.hidden;
  $("toggle-settings").setAttribute("aria-expanded", String(!panel.hidden));
});

loadSettings();
showModel();
$("prompt").focus();
