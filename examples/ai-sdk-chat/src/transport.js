// The AI SDK's own WebSocketChatTransport, set up for llm-stream: only the newest message goes
// up (the server keeps each chat's history by its id), so no client frame nears API Gateway's
// 32 KB limit. The page and the Node tests both use this.
import { WebSocketChatTransport } from 'ai';

/** Send only the newest message; the server supplies the rest of the chat (by chat `id`). */
export function newestMessageOnly({ messages }) {
  return { messages: messages.slice(-1) };
}

/**
 * @param {object} options
 * @param {string} options.url the WebSocket API's ws:// or wss:// URL
 * @param {typeof WebSocket} [options.webSocket] e.g. the `ws` package outside the browser
 * @param {boolean} [options.wholeHistory] send every message each turn (the SDK's default)
 */
export function createTransport({ url, webSocket, wholeHistory = false }) {
  return new WebSocketChatTransport({
    url,
    webSocket,
    prepareSendMessagesRequest: wholeHistory ? undefined : newestMessageOnly,
  });
}
