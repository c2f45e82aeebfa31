// A conversation as the page keeps it, and what of it the model is sent.
//
// A message: { role: "user" | "assistant" | "error", text, images (data URLs of the
// user's images and videos; imagesId: where store.js keeps them),
// state ("streaming" | "done" | "stopped" | "error"), finish (the finish_reason),
// stats (its small print), notSent (a user message whose request failed), dropped (left
// out of the model's view because the context is full) }. Errors are the page's own
// notes: the model never sees them.

import { isVideo } from "./images.js";

const TITLE_LENGTH = 40;

export function newConversation() {
  return { id: crypto.randomUUID(), title: null, updated: Date.now(), messages: [] };
}

export function titleOf(conversation) {
  if (conversation.title) return conversation.title;
  const first = conversation.messages.find((m) => m.role === "user");
  if (!first?.text) return "New chat";
  return first.text.length > TITLE_LENGTH ? `${first.text.slice(0, TITLE_LENGTH)}…` : first.text;
}

const inView = (message) => message.role !== "error" && !message.notSent && !message.dropped;

function openAIMessage({ role, text, images = [] }) {
  if (images.length === 0) return { role, content: text };
  // A video goes as a video_url part (vLLM's convention; the server samples its frames).
  const parts = images.map((url) => {
    const type = isVideo(url) ? "video_url" : "image_url";
    return { type, [type]: { url } };
  });
  return { role, content: text ? [{ type: "text", text }, ...parts] : parts };
}

// The OpenAI messages that ask for `reply`: those before it still in view, and the
// reply itself when it is being continued (it has text), as the message the server
// continues.
export function requestMessages(messages, reply) {
  const end = messages.indexOf(reply) + (reply.text ? 1 : 0);
  return messages.slice(0, end).filter(inView).map(openAIMessage);
}

// Leaves the oldest turn (a user message and its replies) out of the model's view, to
// make room; false when the newest question is all that is left.
export function dropOldestTurn(messages, reply) {
  const visible = messages.slice(0, messages.indexOf(reply)).filter(inView);
  const newestQuestion = visible.findLast((m) => m.role === "user");
  if (visible.length === 0 || visible[0] === newestQuestion) return false;
  let i = 0;
  do visible[i++].dropped = true;
  while (i < visible.length && visible[i].role === "assistant");
  return true;
}
