// The chat page: one WebSocket for the whole chat (`keepOpen`), the conversation kept by the
// service (`conversationId`), a Stop button (`cancel`), and automatic `resume` when the socket
// drops mid-answer: it reconnects and asks for the deltas after the last seq it has, so the
// answer goes on in the same bubble with nothing missing or repeated. Frames are rendered as they
// arrive (accepted/start/reasoning/delta/end/error, see docs/protocol.md and docs/sessions.md);
// a reasoning model's thinking goes into a folded "Reasoning" section above the answer.

const CONNECT_TIMEOUT_MS = 10_000;
const RETRY_DELAYS_MS = [500, 1000, 2000]; // backoff between connection attempts for one send
const RESUME_DELAYS_MS = [0, 500, 1000, 2000, 4000]; // reconnecting to resume an answer
const MAX_RESUMES = 5; // drops one answer survives

const STATE_LABELS = {
  idle: "Not connected (connects when you send)",
  connecting: "Connecting…",
  open: "Connected",
  error: "Cannot connect",
};

const $ = (selector) => document.querySelector(selector);
const ui = {
  url: $("#ws-url"),
  state: $("#conn-state"),
  form: $("#composer"),
  prompt: $("#prompt"),
  send: $("#send"),
  stop: $("#stop"),
  model: $("#model"),
  modelPicker: $("#model-picker"),
  newChat: $("#new-chat"),
  transcript: $("#transcript"),
  hint: $("#hint"),
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A fresh id; matches the protocol's ^[A-Za-z0-9._:=+/-]{1,128}$. Unguessable, which matters:
 *  without auth, knowing an answer's requestId is what lets a client resume it. */
function newId() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts (https, localhost)
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

let conversationId = newId();

/** The client → server message for one prompt of this chat. */
function sendMessage(requestId, prompt) {
  const message = {
    action: "sendMessage",
    requestId,
    prompt,
    conversationId,
    keepOpen: true,
    resumable: true,
  };
  if (!ui.modelPicker.hidden && ui.model.value) message.model = ui.model.value;
  return message;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Keep the newest text in view, unless the reader has scrolled up to read something. */
function follow(update) {
  const t = ui.transcript;
  const atBottom = t.scrollHeight - t.scrollTop - t.clientHeight < 48;
  update();
  if (atBottom) t.scrollTop = t.scrollHeight;
}

/** One prompt and its answer bubble: applies the server's frames for one requestId. */
class Turn {
  constructor(prompt) {
    this.requestId = newId();
    this.nextSeq = 0; // reasoning and delta frames share one gapless seq
    this.done = false;
    this.cancelling = false;
    this.resumes = 0;
    this.reconnecting = null; // the notice shown while the answer is being resumed

    const question = element("article", "message user");
    question.append(element("div", "text", prompt));

    this.bubble = element("article", "message assistant");
    this.bubble.dataset.requestId = this.requestId;
    this.meta = element("div", "meta");
    this.meta.title = `requestId ${this.requestId}`;
    this.text = element("div", "text");
    this.reasoning = null; // the folded <details> above the answer, made on the first reasoning
    this.bubble.append(this.meta, this.text);
    this.setStatus("sending");

    ui.transcript.querySelector(".empty")?.remove();
    follow(() => ui.transcript.append(question, this.bubble));
  }

  get status() {
    return this.bubble.dataset.status;
  }

  setStatus(status) {
    this.bubble.dataset.status = status; // sending, accepted, streaming, resuming, done, cancelled, error
    this.bubble.setAttribute("aria-busy", String(!this.done));
  }

  notice(kind, ...content) {
    const note = element("p", `notice ${kind}`);
    if (kind === "error") note.setAttribute("role", "alert");
    note.append(...content);
    follow(() => this.bubble.append(note));
    return note;
  }

  apply(frame) {
    if (this.done) return; // nothing follows `end` or `error`
    switch (frame.type) {
      case "accepted": // of the prompt, of a resume, or of a cancel
        if (this.status === "sending") this.setStatus("accepted");
        else if (this.status === "resuming") this.resumed();
        break;
      case "start":
        this.meta.textContent = frame.model ?? "";
        this.setStatus("streaming");
        break;
      case "reasoning":
        this.resumed();
        if (this.takeSeq(frame.seq)) follow(() => this.reasoningText().append(frame.text ?? ""));
        break;
      case "delta":
        this.resumed();
        if (this.takeSeq(frame.seq)) follow(() => this.text.append(frame.text ?? ""));
        break;
      case "end":
        this.resumed();
        this.finish(frame.finishReason === "cancelled" ? "cancelled" : "done");
        this.usage(frame.usage, frame.finishReason);
        break;
      case "error":
        this.fail(frame.message ?? "", frame.code);
        break;
      default:
        break; // a frame type this page does not know yet
    }
  }

  /** Whether a reasoning or delta frame's ``seq`` is new (it is then counted, and a gap before
   *  it reported); false for a malformed seq or a repeat, whose text must not be shown. */
  takeSeq(seq) {
    if (!Number.isInteger(seq) || seq < this.nextSeq) return false;
    if (seq > this.nextSeq) {
      const missing = seq - 1 > this.nextSeq ? `${this.nextSeq}–${seq - 1}` : `${this.nextSeq}`;
      this.notice("warning", `Missing part of the answer (seq ${missing}).`);
    }
    this.nextSeq = seq + 1;
    this.setStatus("streaming");
    return true;
  }

  /** Where reasoning text goes: a folded section above the answer, made when first needed. */
  reasoningText() {
    if (!this.reasoning) {
      this.reasoning = element("details", "reasoning");
      this.reasoning.append(element("summary", "", "Reasoning"), element("div", "reasoning-text"));
      this.text.before(this.reasoning);
    }
    return this.reasoning.lastElementChild;
  }

  /** The socket dropped mid-answer: say so until the answer flows again. */
  resuming() {
    this.resumes += 1;
    this.setStatus("resuming");
    this.reconnecting ??= this.notice("info", "Connection lost; resuming the answer…");
  }

  resumed() {
    if (this.status === "resuming") this.setStatus(this.nextSeq > 0 ? "streaming" : "accepted");
    this.reconnecting?.remove();
    this.reconnecting = null;
  }

  usage(usage, finishReason) {
    const parts = [];
    if (usage?.inputTokens != null) parts.push(`${usage.inputTokens} in`);
    if (usage?.outputTokens != null) parts.push(`${usage.outputTokens} out`);
    if (parts.length) parts[0] = `tokens: ${parts[0]}`;
    if (finishReason && finishReason !== "stop") parts.push(`finished: ${finishReason}`);
    if (!parts.length) return;
    follow(() => this.bubble.append(element("footer", "usage", parts.join(" · "))));
  }

  /** An error frame (with its code), or a failure on this side (without one). */
  fail(message, code) {
    if (this.done) return;
    this.reconnecting?.remove();
    this.reconnecting = null;
    this.finish("error");
    const content = code ? [element("strong", "code", code), `: ${message}`] : [message];
    this.notice("error", ...content);
  }

  finish(status) {
    this.done = true;
    this.setStatus(status);
  }
}

/** The chat's one WebSocket. `open()` gives the open socket, connecting first if need be. */
class Connection {
  constructor({ onFrame, onClose }) {
    this.ws = null;
    this.opening = null; // the promise of this.ws opening
    this.onFrame = onFrame;
    this.onClose = onClose;
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  setState(state, detail) {
    ui.state.dataset.state = state;
    ui.state.querySelector(".label").textContent = detail
      ? `${STATE_LABELS[state]}: ${detail}`
      : STATE_LABELS[state];
  }

  /** The open socket, connecting (a few times, with backoff) if there is none; throws if none
   *  can be opened. */
  async open() {
    if (this.ws) {
      try {
        return await this.opening; // open already, or still connecting
      } catch {
        // that attempt failed: try again below
      }
    }
    this.drop();
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.dial();
      } catch (err) {
        if (err.permanent || attempt >= RETRY_DELAYS_MS.length) throw err;
        await sleep(RETRY_DELAYS_MS[attempt]);
      }
    }
  }

  dial() {
    this.opening = this.connect(ui.url.value.trim());
    return this.opening;
  }

  connect(url) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        // Browsers now resolve relative and http(s) URLs here; only an absolute ws(s) one is meant.
        if (!/^wss?:\/\/./i.test(url)) throw new SyntaxError(url);
        ws = new WebSocket(url);
      } catch {
        this.setState("error", "not a ws:// or wss:// URL");
        const error = new Error(`"${url}" is not a ws:// or wss:// URL`);
        reject(Object.assign(error, { permanent: true }));
        return;
      }
      this.ws = ws;
      this.setState("connecting");
      let opened = false;
      const timer = setTimeout(() => ws.close(), CONNECT_TIMEOUT_MS);
      ws.onopen = () => {
        opened = true;
        clearTimeout(timer);
        this.setState("open");
        resolve();
      };
      ws.onmessage = (event) => this.message(event.data);
      ws.onclose = (event) => {
        clearTimeout(timer);
        if (this.ws !== ws) return; // a socket this page already let go of
        this.ws = null;
        if (!opened) {
          this.setState("error");
          reject(new Error(`could not connect to ${url}`));
          return;
        }
        this.setState("idle");
        this.onClose(event);
      };
    });
  }

  message(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return console.warn("not a JSON frame", data);
    }
    // API Gateway's own replies ({"message": "Forbidden"}, "Internal server error") have no type.
    if (frame && typeof frame === "object") this.onFrame(frame);
  }

  send(message) {
    if (!this.isOpen) throw new Error("not connected");
    this.ws.send(JSON.stringify(message));
  }

  drop() {
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    this.setState("idle");
  }
}

// ------------------------------------------------------------------------- the page

const turns = new Map(); // requestId -> Turn
let current = null; // the Turn whose answer is on its way; one at a time

function busy(on) {
  ui.send.disabled = ui.url.disabled = ui.newChat.disabled = ui.model.disabled = on;
  ui.stop.hidden = !on;
  ui.stop.disabled = false;
}

function settle(turn) {
  if (turn !== current || !turn.done) return;
  current = null;
  busy(false);
}

const connection = new Connection({
  onFrame(frame) {
    const turn = turns.get(frame.requestId) ?? current;
    if (!turn) return;
    if (frame.type) turn.apply(frame);
    else if (typeof frame.message === "string") turn.fail(`API Gateway: ${frame.message}`);
    settle(turn);
  },
  onClose() {
    if (current && !current.done) resume(current);
  },
});

/** Reconnect and ask for the rest of ``turn``'s answer, after the last seq it has. */
async function resume(turn) {
  if (turn.resumes >= MAX_RESUMES) {
    turn.fail("The connection kept dropping before the answer was complete.");
    settle(turn);
    return;
  }
  turn.resuming();
  for (const delay of RESUME_DELAYS_MS) {
    await sleep(delay);
    if (turn.done || connection.isOpen) return; // finished, or another resume got there first
    try {
      await connection.open();
      connection.send({ action: "resume", requestId: turn.requestId, afterSeq: turn.nextSeq - 1 });
      if (turn.cancelling) connection.send({ action: "cancel", requestId: turn.requestId });
      return; // the rest arrives as frames; another drop comes back here
    } catch {
      // not reachable yet: wait and try again
    }
  }
  turn.fail("The connection closed before the answer was complete, and could not be resumed.");
  settle(turn);
}

async function submit() {
  const prompt = ui.prompt.value;
  if (current || !prompt.trim()) return;
  ui.prompt.value = "";
  busy(true);
  const turn = (current = new Turn(prompt));
  turns.set(turn.requestId, turn);
  try {
    await connection.open();
    connection.send(sendMessage(turn.requestId, prompt));
  } catch (err) {
    turn.fail(`${err.message}. Check the WebSocket URL and try again.`);
    settle(turn);
  }
}

function stop() {
  const turn = current;
  if (!turn || turn.done || turn.cancelling) return;
  turn.cancelling = true;
  ui.stop.disabled = true;
  try {
    connection.send({ action: "cancel", requestId: turn.requestId });
  } catch {
    // the socket is down: the resume sends the cancel once it reconnects
  }
}

function newChat() {
  if (current) return;
  conversationId = newId();
  turns.clear();
  ui.transcript.replaceChildren(element("p", "empty", "A new chat. Ask something below."));
  ui.prompt.focus();
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", newChat);

ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.form.requestSubmit();
  }
});

// A new URL: let the old socket go and check the new one, so the indicator says if it works.
ui.url.addEventListener("change", () => {
  connection.drop();
  if (ui.url.value.trim()) connection.dial().catch(() => {});
});

function offerModels(models) {
  const list = Array.isArray(models) ? models.filter((m) => typeof m === "string" && m) : [];
  ui.model.replaceChildren(...list.map((m) => element("option", "", m)));
  ui.modelPicker.hidden = list.length < 2; // nothing to choose: the deployment's model it is
}

async function configure() {
  let config = {};
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (response.ok) config = await response.json();
  } catch {
    // served without the local stack (or opened from disk): the URL is typed in
  }
  ui.url.value = new URLSearchParams(location.search).get("ws") ?? config.wsUrl ?? "";
  offerModels(config.models);
  if (config.mockLlm) {
    ui.hint.textContent =
      "Mock LLM: a line like #mock tokens=200 rate=20 in your message scripts the answer " +
      "(reasoning=30 thinks first).";
    ui.hint.hidden = false;
  }
  ui.url.dispatchEvent(new Event("change"));
  ui.prompt.focus();
}

configure();
