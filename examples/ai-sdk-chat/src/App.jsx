// The chat: useChat over llm-stream's WebSocket API with the AI SDK's WebSocketChatTransport.
// The chat id and its finished turns are kept in sessionStorage, so that a reload mid-answer
// comes back to the same chat and `resume: true` replays the answer that is still streaming.
import { useChat } from '@ai-sdk/react';
import { generateId } from 'ai';
import { useEffect, useMemo, useState } from 'react';
import { createTransport } from './transport.js';

const CHAT_KEY = 'ai-sdk-chat:id';
const messagesKey = (chatId) => `ai-sdk-chat:messages:${chatId}`;

function storedChatId() {
  let id = sessionStorage.getItem(CHAT_KEY);
  if (!id) {
    id = generateId();
    sessionStorage.setItem(CHAT_KEY, id);
  }
  return id;
}

function storedMessages(chatId) {
  try {
    return JSON.parse(sessionStorage.getItem(messagesKey(chatId)) ?? '[]');
  } catch {
    return [];
  }
}

export function App({ url }) {
  // One transport, so one socket, for every chat of this page.
  const transport = useMemo(() => createTransport({ url }), [url]);
  const [chatId, setChatId] = useState(storedChatId);
  const newChat = () => {
    const id = generateId();
    sessionStorage.setItem(CHAT_KEY, id);
    setChatId(id);
  };
  return <Chat key={chatId} chatId={chatId} transport={transport} url={url} onNewChat={newChat} />;
}

/**
 * The transport, telling when the resume that `resume: true` sends on load has its answer: a
 * prompt sent before then would race a replay of the answer still streaming.
 */
function useResumeSettled(transport) {
  const [settled, setSettled] = useState(false);
  const watched = useMemo(
    () => ({
      get resumeStreamIsReplay() {
        return transport.resumeStreamIsReplay;
      },
      sendMessages: (options) => transport.sendMessages(options),
      reconnectToStream: (options) =>
        transport.reconnectToStream(options).finally(() => setSettled(true)),
    }),
    [transport],
  );
  return [watched, settled];
}

function Chat({ chatId, transport, url, onNewChat }) {
  const [initialMessages] = useState(() => storedMessages(chatId));
  const [watchedTransport, resumeSettled] = useResumeSettled(transport);
  const { messages, sendMessage, status, stop, error } = useChat({
    id: chatId,
    messages: initialMessages,
    transport: watchedTransport,
    resume: true,
  });
  const [input, setInput] = useState('');
  const busy = status === 'submitted' || status === 'streaming';
  const canSend = resumeSettled && !busy;

  // A half-streamed answer is not stored: after a reload the resume replays it whole.
  useEffect(() => {
    if (status !== 'streaming') sessionStorage.setItem(messagesKey(chatId), JSON.stringify(messages));
  }, [chatId, messages, status]);

  const submit = (event) => {
    event.preventDefault();
    if (!canSend || !input.trim()) return;
    sendMessage({ text: input });
    setInput('');
  };

  return (
    <div className="chat">
      <header className="bar">
        <h1>llm-stream · AI SDK</h1>
        <p className="endpoint" title="WebSocket URL">
          <code id="ws-url">{url}</code>
        </p>
        <button id="new-chat" type="button" className="secondary" onClick={onNewChat}>
          New chat
        </button>
      </header>

      <main id="transcript" aria-live="polite" aria-label="Conversation">
        {messages.length === 0 && <p className="empty">Ask something below.</p>}
        {messages.map((message, i) => (
          <Message
            key={message.id}
            message={message}
            streaming={busy && i === messages.length - 1 && message.role === 'assistant'}
          />
        ))}
        {error && (
          <p className="notice error" role="alert">
            {error.message}
          </p>
        )}
      </main>

      <form id="composer" className="bar" onSubmit={submit}>
        <label htmlFor="prompt" className="visually-hidden">
          Your message
        </label>
        <textarea
          id="prompt"
          rows={2}
          value={input}
          placeholder="Message (Enter sends, Shift+Enter for a new line)"
          onChange={(event) => setInput(event.target.value)}
          onKeyDown={(event) => {
            if (event.key === 'Enter' && !event.shiftKey) submit(event);
          }}
        />
        <div className="actions">
          <span id="status" data-status={status} className="visually-hidden">
            {status}
          </span>
          {busy ? (
            <button id="stop" type="button" className="secondary" onClick={() => stop()}>
              Stop
            </button>
          ) : (
            <button id="send" type="submit" disabled={!canSend}>
              Send
            </button>
          )}
        </div>
      </form>
    </div>
  );
}

function Message({ message, streaming }) {
  const textOf = (type) =>
    message.parts
      .filter((part) => part.type === type)
      .map((part) => part.text)
      .join('');
  const reasoning = textOf('reasoning');
  const { model, usage } = message.metadata ?? {};
  return (
    <article
      className={`message ${message.role}`}
      data-role={message.role}
      data-status={streaming ? 'streaming' : 'done'}
    >
      {reasoning && (
        <details className="reasoning">
          <summary>Reasoning</summary>
          <p className="reasoning-text">{reasoning}</p>
        </details>
      )}
      <p className="text">{textOf('text')}</p>
      {model && (
        <p className="meta">
          {model}
          {usage && ` · ${usage.inputTokens} in, ${usage.outputTokens} out`}
        </p>
      )}
    </article>
  );
}
