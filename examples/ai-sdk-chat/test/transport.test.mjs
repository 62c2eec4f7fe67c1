// The AI SDK's real WebSocketChatTransport (ai@7.0.173, `ws` as its WebSocket) against a running
// llm-stream stack: LLM_STREAM_WS_URL names its WebSocket API (tests/integration/test_ai_sdk.py
// starts the local stack and sets it). The mock LLM's `#mock` lines script every answer.
import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import { generateId, readUIMessageStream } from 'ai';
import WebSocket from 'ws';
import { createTransport } from '../src/transport.js';

const WS_URL = process.env.LLM_STREAM_WS_URL;
if (!WS_URL) throw new Error('LLM_STREAM_WS_URL must name the stack\'s ws:// URL');
const MODEL = process.env.LLM_STREAM_MODEL ?? 'gpt-4o-mini';

// Generous, but nothing waits forever: a hang fails with what had arrived so far.
const STEP_MS = 30_000;
const TEST_MS = 60_000;

/** How the transport words the frames it refuses (ai/dist/index.js, handleResponseFrame). */
const PROTOCOL_ERROR = /^(Invalid WebSocket chat|Unknown WebSocket chat response type|Out-of-order WebSocket chat|Invalid UI message chunk)/;

/** What the mock LLM streams for `#mock tokens=n`. */
const tokens = (n) => Array.from({ length: n }, (_, i) => `t${i} `).join('');
/** What the mock LLM counts as a message's tokens: its whitespace-separated words. */
const words = (text) => text.split(/\s+/).filter(Boolean).length;

const userMessage = (text) => ({ id: generateId(), role: 'user', parts: [{ type: 'text', text }] });
const assistantMessage = (text) => ({
  id: generateId(),
  role: 'assistant',
  parts: [{ type: 'text', text }],
});

const open = [];
afterEach(() => {
  for (const transport of open.splice(0)) transport.close();
});

/**
 * A transport (the page's own setup, src/transport.js) whose sockets and the frames they sent
 * are recorded, so a test can count connections, read the frames, and drop a socket.
 */
function openTransport(options = {}) {
  const sockets = [];
  const sent = [];
  class RecordedWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
    send(data, ...rest) {
      sent.push(JSON.parse(data));
      return super.send(data, ...rest);
    }
  }
  const transport = createTransport({ url: WS_URL, webSocket: RecordedWebSocket, ...options });
  open.push(transport);
  return { transport, sockets, sent };
}

function within(promise, what, ms = STEP_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Starts one turn of a chat the way useChat does: every message, the newest last. */
function send(transport, chatId, messages, abortSignal) {
  return within(
    transport.sendMessages({
      chatId,
      messages,
      abortSignal,
      trigger: 'submit-message',
      messageId: undefined,
      metadata: undefined,
      headers: undefined,
      body: undefined,
    }),
    'send',
  );
}

function resume(transport, chatId) {
  return within(
    transport.reconnectToStream({ chatId, metadata: undefined, headers: undefined, body: undefined }),
    'answer to the resume',
  );
}

/**
 * Reads a UI message stream to its end. Returns its chunks and the error that ended it, if
 * any; `until(text)` stops reading early (the reader is returned to go on with).
 */
async function read(stream, { until } = {}) {
  const reader = stream.getReader();
  const chunks = [];
  try {
    for (;;) {
      const next = await within(reader.read(), `chunk after ${JSON.stringify(chunks.slice(-3))}`);
      if (next.done) return { chunks, error: undefined, reader };
      chunks.push(next.value);
      if (until?.(textOf(chunks))) return { chunks, error: undefined, reader };
    }
  } catch (error) {
    if (String(error.message).startsWith('no chunk after')) throw error;
    return { chunks, error, reader };
  }
}

/** Reads until the answer's text passes `marker`; the stream must not fail before. */
async function readUntil(stream, marker) {
  const { chunks, error, reader } = await read(stream, { until: (text) => text.includes(marker) });
  assert.equal(error, undefined, `the answer failed before ${JSON.stringify(marker)}: ${error?.message}`);
  assert.ok(textOf(chunks).includes(marker), `the answer ended before ${JSON.stringify(marker)}`);
  return { chunks, reader };
}

/** Reads a stream that must end cleanly. */
async function answer(stream) {
  const { chunks, error } = await read(stream);
  assert.equal(error, undefined, `the answer failed: ${error?.message}`);
  return chunks;
}

const textOf = (chunks, type = 'text-delta') =>
  chunks
    .filter((chunk) => chunk.type === type)
    .map((chunk) => chunk.delta)
    .join('');
const finishOf = (chunks) => chunks.find((chunk) => chunk.type === 'finish');

/** The assistant message the SDK itself assembles from the chunks (as useChat would). */
async function assembled(chunks) {
  const stream = new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
  let message;
  for await (const state of readUIMessageStream({ stream, terminateOnError: true })) message = state;
  return message;
}

test('a streamed answer arrives exact, with the model and usage in the finish chunk', { timeout: TEST_MS }, async () => {
  const { transport } = openTransport();

  const chunks = await answer(
    await send(transport, generateId(), [userMessage('Count.\n#mock tokens=20 rate=200')]),
  );

  assert.equal(textOf(chunks), tokens(20));
  const finish = finishOf(chunks);
  assert.ok(finish, `no finish chunk in ${JSON.stringify(chunks.map((c) => c.type))}`);
  assert.equal(chunks.at(-1), finish, 'the finish chunk is the last one');
  assert.equal(finish.finishReason, 'stop');
  assert.equal(finish.messageMetadata?.model, MODEL);
  assert.equal(finish.messageMetadata?.usage?.outputTokens, 20);
  assert.ok(finish.messageMetadata?.usage?.inputTokens > 0, JSON.stringify(finish));
  const message = await assembled(chunks);
  assert.deepEqual(
    message.parts.filter((part) => part.type === 'text').map((part) => part.text),
    [tokens(20)],
  );
  assert.deepEqual(message.metadata, finish.messageMetadata);
});

test('two turns share one socket, and with only the newest message sent the server supplies the history', { timeout: TEST_MS }, async () => {
  const { transport, sockets, sent } = openTransport();
  const chatId = generateId();
  const first = userMessage('I am Ada.\n#mock tokens=5 rate=0');

  const one = await answer(await send(transport, chatId, [first]));
  assert.equal(textOf(one), tokens(5));
  const second = userMessage('Who am I?\n#mock tokens=8 rate=0');
  const two = await answer(
    await send(transport, chatId, [first, assistantMessage(textOf(one)), second]),
  );

  assert.equal(textOf(two), tokens(8));
  assert.equal(sockets.length, 1, 'the second turn opened another socket');
  assert.equal(sockets[0].readyState, WebSocket.OPEN, 'the server closed the socket');
  const sends = sent.filter((frame) => frame.type === 'send');
  assert.deepEqual(
    sends.map((frame) => frame.messages.map((m) => m.id)),
    [[first.id], [second.id]],
    'only the newest message goes up',
  );
  // The mock LLM counts a prompt's words: the second prompt held the first turn and its answer.
  const input = (chunks) => finishOf(chunks)?.messageMetadata?.usage?.inputTokens;
  assert.equal(input(two), input(one) + words(tokens(5)) + words(second.parts[0].text));
});

test('a chat sent whole is used as it is, not merged with a stored history', { timeout: TEST_MS }, async () => {
  const { transport } = openTransport({ wholeHistory: true });
  const probe = userMessage('Hello.\n#mock tokens=1 rate=0');
  const alone = await answer(await send(transport, generateId(), [probe]));
  const system = finishOf(alone).messageMetadata.usage.inputTokens - words(probe.parts[0].text);

  const history = [
    userMessage('What is the capital of France?'),
    assistantMessage('Paris, on the Seine.'),
    userMessage('And of Italy?\n#mock tokens=3 rate=0'),
  ];
  const chunks = await answer(await send(transport, generateId(), history));

  assert.equal(textOf(chunks), tokens(3));
  const expected = system + history.reduce((n, m) => n + words(m.parts[0].text), 0);
  assert.equal(finishOf(chunks).messageMetadata.usage.inputTokens, expected);
});

test('an abort stops the answer mid-stream, and the next send on the socket works', { timeout: TEST_MS }, async () => {
  const { transport, sockets, sent } = openTransport();
  const chatId = generateId();
  const stop = new AbortController();

  const stream = await send(transport, chatId, [userMessage('Count slowly.\n#mock tokens=400 rate=20')], stop.signal);
  const { chunks, reader } = await readUntil(stream, 't3 ');
  stop.abort();
  for (let next = await within(reader.read(), 'end'); !next.done; next = await within(reader.read(), 'end')) {
    chunks.push(next.value);
  }

  const cut = textOf(chunks);
  assert.equal(cut, tokens(words(cut)), 'in order, no gap, cut short');
  const aborts = sent.filter((frame) => frame.type === 'abort');
  assert.deepEqual(aborts, [{ type: 'abort', requestId: sent[0].requestId }]);
  const next = await answer(
    await send(transport, chatId, [userMessage('Again.\n#mock tokens=5 rate=0')]),
  );
  assert.equal(textOf(next), tokens(5));
  assert.equal(sockets.length, 1, 'the abort cost the socket');
  // Stopped, not just unheard: the chat has no answer left streaming to resume.
  assert.equal(await resume(openTransport().transport, chatId), null);
});

test('after the socket drops mid-answer, reconnectToStream on a new transport replays the whole answer', { timeout: TEST_MS }, async () => {
  const first = openTransport();
  const chatId = generateId();
  const stream = await send(first.transport, chatId, [userMessage('A long story.\n#mock tokens=60 rate=20')]);
  await readUntil(stream, 't5 ');

  first.sockets[0].terminate(); // no close frame, as when a network goes away
  const { transport, sent } = openTransport(); // as after a reload: nothing carried over
  const replay = await resume(transport, chatId);

  assert.notEqual(replay, null, 'the server answered no-active: the drop stopped the answer');
  const chunks = await answer(replay);
  assert.equal(textOf(chunks), tokens(60));
  assert.equal(finishOf(chunks)?.finishReason, 'stop');
  assert.deepEqual(Object.keys(sent[0]).sort(), ['body', 'headers', 'id', 'requestId', 'type']);
  assert.equal(sent[0].id, chatId);
});

test('reconnectToStream resolves to null (no-active) for a chat with nothing streaming', { timeout: TEST_MS }, async () => {
  const { transport } = openTransport();
  assert.equal(await resume(transport, generateId()), null, 'a chat never seen');

  const chatId = generateId();
  await answer(await send(transport, chatId, [userMessage('Hi.\n#mock tokens=2 rate=0')]));
  assert.equal(await resume(transport, chatId), null, 'a chat whose answer has finished');
});

test('a model that fails mid-answer gives an error, not a hang, and the socket stays usable', { timeout: TEST_MS }, async () => {
  const { transport, sockets } = openTransport();
  const chatId = generateId();

  const { chunks, error } = await read(
    await send(transport, chatId, [userMessage('Fail.\n#mock tokens=20 rate=100 fail_after=3')]),
  );

  const errorChunk = chunks.find((chunk) => chunk.type === 'error');
  assert.ok(error || errorChunk, `the answer ended without an error: ${JSON.stringify(chunks)}`);
  const message = error?.message ?? errorChunk.errorText;
  assert.ok(message.length > 0);
  assert.doesNotMatch(message, PROTOCOL_ERROR, 'the client refused a frame; the model failure was not what ended it');
  assert.equal(textOf(chunks), tokens(3), 'the text before the failure is kept');
  const next = await answer(await send(transport, chatId, [userMessage('Hi.\n#mock tokens=2 rate=0')]));
  assert.equal(textOf(next), tokens(2));
  assert.equal(sockets.length, 1, 'the error cost the socket');
});

test('twenty chats at once, each on its own socket, each exact', { timeout: TEST_MS * 2 }, async () => {
  const counts = Array.from({ length: 20 }, (_, i) => 30 + i);

  const results = await Promise.all(
    counts.map(async (n) => {
      const { transport } = openTransport();
      const stream = await send(transport, generateId(), [userMessage(`Chat ${n}.\n#mock tokens=${n} rate=100`)]);
      return answer(stream);
    }),
  );

  results.forEach((chunks, i) => {
    assert.equal(textOf(chunks), tokens(counts[i]), `chat ${i}`);
    assert.equal(finishOf(chunks)?.messageMetadata?.usage?.outputTokens, counts[i], `chat ${i}`);
  });
});

test('reasoning arrives as reasoning chunks before the text, and the SDK files it as a reasoning part', { timeout: TEST_MS }, async () => {
  const { transport } = openTransport();

  const chunks = await answer(
    await send(transport, generateId(), [userMessage('Think first.\n#mock reasoning=5 tokens=5')]),
  );

  const types = chunks.map((chunk) => chunk.type);
  const firstText = types.indexOf('text-start');
  assert.ok(types.includes('reasoning-start'), `no reasoning in ${JSON.stringify(types)}`);
  assert.ok(types.lastIndexOf('reasoning-end') < firstText, `reasoning after text: ${JSON.stringify(types)}`);
  assert.ok(types.indexOf('reasoning-start') < types.indexOf('reasoning-delta'));
  assert.ok(textOf(chunks, 'reasoning-delta').trim().length > 0, 'the reasoning is empty');
  assert.equal(textOf(chunks), tokens(5));
  const message = await assembled(chunks);
  assert.deepEqual(
    message.parts.filter((p) => p.type === 'reasoning' || p.type === 'text').map((p) => p.type),
    ['reasoning', 'text'],
  );
});
