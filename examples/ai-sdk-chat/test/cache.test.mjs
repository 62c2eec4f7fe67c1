// The response cache (docs/cache.md) through the AI SDK's real WebSocketChatTransport: run by
// tests/integration/test_local_cache.py against a stack with ResponseCacheTtlSeconds on, which
// sets LLM_STREAM_CACHE; skipped in the plain `npm test` run, whose stack has no cache.
import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import { generateId, readUIMessageStream } from 'ai';
import WebSocket from 'ws';
import { createTransport } from '../src/transport.js';

const WS_URL = process.env.LLM_STREAM_WS_URL;
const skip = !process.env.LLM_STREAM_CACHE && 'needs a stack with the response cache on';
const TEST_MS = 60_000;

const open = [];
afterEach(() => {
  for (const transport of open.splice(0)) transport.close();
});

async function ask(text, body = undefined) {
  const transport = createTransport({ url: WS_URL, webSocket: WebSocket });
  open.push(transport);
  const stream = await transport.sendMessages({
    chatId: generateId(), // a new chat each time: only the message itself shapes the answer
    messages: [{ id: generateId(), role: 'user', parts: [{ type: 'text', text }] }],
    abortSignal: undefined,
    trigger: 'submit-message',
    messageId: undefined,
    metadata: undefined,
    headers: undefined,
    body,
  });
  let message;
  for await (const state of readUIMessageStream({ stream, terminateOnError: true })) message = state;
  return message;
}

const textOf = (message) =>
  message.parts.filter((part) => part.type === 'text').map((part) => part.text).join('');

test('an identical second send is answered from the cache, marked cached with the first usage', { skip, timeout: TEST_MS }, async () => {
  const text = `starter ${generateId()}\n#mock tokens=15 rate=0`;
  const first = await ask(text);
  const second = await ask(text);

  assert.equal(textOf(second), textOf(first));
  assert.equal(textOf(first).split(' ').filter(Boolean).length, 15);
  assert.equal(first.metadata?.cached, undefined);
  assert.equal(second.metadata?.cached, true);
  assert.deepEqual(second.metadata?.usage, first.metadata?.usage);
});

test('body.cache false opts a send out of the cache', { skip, timeout: TEST_MS }, async () => {
  const text = `starter ${generateId()}\n#mock tokens=5 rate=0`;
  await ask(text);
  const optedOut = await ask(text, { cache: false });
  assert.equal(optedOut.metadata?.cached, undefined);
  assert.equal(textOf(optedOut).split(' ').filter(Boolean).length, 5);
});
