// Conversation DOM. Model output is untrusted: it only ever becomes text nodes
// (textContent), never HTML, so a reply cannot inject markup or scripts.

const FENCE = "```";

// Fills `element` with `text`, fenced ``` blocks as <pre><code> (the language tag after
// the opening fence is dropped). An unclosed fence, mid-stream, is already code.
export function renderText(element, text) {
  const parts = text.split(FENCE);
  const nodes = parts.map((part, i) => {
    if (i % 2 === 0) return document.createTextNode(part);
    const newline = part.indexOf("\n");
    const code = document.createElement("code");
    code.textContent = newline === -1 ? part : part.slice(newline + 1);
    const pre = document.createElement("pre");
    pre.append(code);
    return pre;
  });
  element.replaceChildren(...nodes);
}

// A message bubble; returns its text element, which callers fill with renderText.
export function addMessage(container, role, text = "", images = []) {
  const message = document.createElement("article");
  message.className = `msg ${role}`;
  message.setAttribute("aria-label", role === "user" ? "You" : role === "error" ? "Error" : "Reply");
  const body = document.createElement("div");
  body.className = "text";
  renderText(body, text);
  message.append(body);
  for (const url of images) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = "attached image";
    message.append(img);
  }
  container.append(message);
  scrollToEnd(container, true);
  return message;
}

// A line of small print under a message (timings, "stopped", the error).
export function setStats(message, text) {
  let stats = message.querySelector(".stats");
  if (!stats) {
    stats = document.createElement("span");
    stats.className = "stats";
    message.append(stats);
  }
  stats.textContent = text;
}

// Follows the stream, unless the user has scrolled up to read.
export function scrollToEnd(container, force = false) {
  const nearEnd = container.scrollHeight - container.scrollTop - container.clientHeight < 80;
  if (force || nearEnd) container.scrollTop = container.scrollHeight;
}
