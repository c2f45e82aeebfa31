// The server's OpenAI-compatible API over fetch: the model list, and chat completions
// streamed as Server-Sent Events read from a ReadableStream.

// An HTTP failure carrying the message and code of the server's OpenAI error object.
export class APIError extends Error {
  constructor(status, message, code = null) {
    super(status ? `${status}: ${message}` : message);
    this.status = status;
    this.code = code;
  }
}

function headers(apiKey) {
  const result = { "Content-Type": "application/json" };
  if (apiKey) result.Authorization = `Bearer ${apiKey}`;
  return result;
}

async function failure(response) {
  let message = response.statusText || "request failed";
  let code = null;
  try {
    const body = await response.json();
    message = body?.error?.message ?? message;
    code = body?.error?.code ?? null;
  } catch {
    // Not JSON (a proxy's error page, say): the status text has to do.
  }
  return new APIError(response.status, message, code);
}

export async function listModels(apiKey) {
  const response = await fetch("/v1/models", { headers: headers(apiKey) });
  if (!response.ok) throw await failure(response);
  return (await response.json()).data;
}

// Streams one reply: calls onDelta(text, numTokens) for each read that brought content
// (numTokens: the content chunks in it, one a token), and resolves to the usage (null
// when the stream was cut before it) and the finish reason. Aborting `signal` cancels
// the request, which makes the server free the request's KV cache at once.
export async function streamChat(body, apiKey, signal, onDelta) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(apiKey),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let usage = null;
  let finishReason = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return { usage, finishReason };
    buffer += value;
    const events = buffer.split("\n\n");
    buffer = events.pop(); // the last one may be incomplete
    let text = "";
    let numTokens = 0;
    for (const event of events) {
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue; // keep-alive comments
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new APIError(0, chunk.error.message, chunk.error.code);
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices?.[0];
        finishReason = choice?.finish_reason ?? finishReason;
        if (choice?.delta?.content) {
          text += choice.delta.content;
          numTokens += 1;
        }
      }
    }
    // One update per read, not per event: a read can carry many tokens.
    if (text) onDelta(text, numTokens);
  }
}
