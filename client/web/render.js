// Conversation DOM: one bubble per message (conversation.js says what a message holds).
// Replies are markdown (markdown.js, which escapes everything the model writes); what
// the user typed and the page's notes are text nodes.

import { isVideo, thumbnail } from "./images.js";
import { renderMarkdown } from "./markdown.js";

const LABELS = { user: "You", assistant: "Reply", error: "Error" };
const ACTIONS = { edit: "Edit", regenerate: "Regenerate", continue: "Continue" };

// A new bubble for `message`, in `container`; fill it with fillMessage.
export function addMessage(container, message) {
  const element = document.createElement("article");
  element.className = `msg ${message.role}`;
  element.setAttribute("aria-label", LABELS[message.role]);
  const body = document.createElement("div");
  body.className = "text";
  element.append(body);
  for (const url of message.images ?? []) {
    element.append(thumbnail(url, isVideo(url) ? "attached video" : "attached image"));
  }
  container.append(element);
  return element;
}

// Brings `element` up to date with `message`; `actions` are the buttons it offers
// (names of ACTIONS), each with a data-action for the page's click handler.
export function fillMessage(element, message, actions = []) {
  const body = element.querySelector(".text");
  if (message.role === "assistant") renderMarkdown(body, message.text);
  else body.textContent = message.text;
  element.dataset.state = message.state ?? "done";
  element.classList.toggle("dropped", Boolean(message.dropped));
  element.querySelector(".foot")?.remove();
  element.querySelector(".corner")?.remove();
  // Edit sits in the bubble's corner (shown on hover or focus), not on a line of its own.
  if (actions.includes("edit")) element.append(actionButton("edit", "corner"));
  actions = actions.filter((action) => action !== "edit");
  const notes = [
    message.dropped && "left out: the conversation no longer fits the model's context",
    message.notSent && "not sent",
    message.finish === "length" && "cut off: the reply reached its token limit",
    message.stats,
  ].filter(Boolean);
  if (notes.length === 0 && actions.length === 0) return;
  const foot = document.createElement("div");
  foot.className = "foot";
  const stats = document.createElement("span");
  stats.className = "stats";
  stats.textContent = notes.join(" · ");
  foot.append(stats);
  for (const action of actions) foot.append(actionButton(action));
  element.append(foot);
}

function actionButton(action, className = "") {
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  button.dataset.action = action;
  button.textContent = ACTIONS[action];
  return button;
}

// Swaps a user bubble's text for a box to edit it in; resolves to the new text, or
// null when cancelled.
export function editInPlace(element, text) {
  const body = element.querySelector(".text");
  const box = document.createElement("textarea");
  box.className = "edit";
  box.value = text;
  box.setAttribute("aria-label", "Edit message");
  const send = document.createElement("button");
  send.type = "button";
  send.textContent = "Send";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.textContent = "Cancel";
  element.querySelector(".foot")?.remove();
  element.querySelector(".corner")?.remove();
  body.replaceChildren(box, send, cancel);
  box.focus();
  return new Promise((resolve) => {
    send.addEventListener("click", () => resolve(box.value.trim() || null));
    cancel.addEventListener("click", () => resolve(null));
  });
}

// Follows the stream, unless the user has scrolled up to read.
export function scrollToEnd(container, force = false) {
  const nearEnd = container.scrollHeight - container.scrollTop - container.clientHeight < 80;
  if (force || nearEnd) container.scrollTop = container.scrollHeight;
}
