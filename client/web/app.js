// The chat page: wires the controls to the API (api.js), the conversations
// (conversation.js, kept by store.js, listed by conversation-list.js), their DOM
// (render.js), the settings (settings.js) and image and video attachments (images.js).

import { listModels, streamChat } from "./api.js";
import { dropOldestTurn, newConversation, requestMessages, titleOf } from "./conversation.js";
import { renderConversationList } from "./conversation-list.js";
import { mediaFiles, readAttachment, showThumbs } from "./images.js";
import { handleCopyButtons } from "./markdown.js";
import { addMessage, editInPlace, fillMessage, scrollToEnd } from "./render.js";
import {
  askForApiKey, currentApiKey, requestSettings, restoreSettings, setContextLength,
} from "./settings.js";
import { deleteImages, loadConversations, loadCurrentId, saveConversations } from "./store.js";

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), badge: $("demo-badge"), newChat: $("new-chat"), list: $("conversations"),
  messages: $("messages"), composer: $("composer"), thumbs: $("thumbs"), attach: $("attach"),
  file: $("file"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
};
const ATTACH_TITLE = ui.attach.title;

const conversations = await loadConversations();
let conversation = conversations.find((c) => c.id === loadCurrentId()) ?? newConversation();
let attached = []; // data URLs waiting for the next message
let model = null; // the card from /v1/models
let controller = null; // aborts the reply being streamed
let elements = new Map(); // message -> its bubble

async function loadModel() {
  try {
    [model] = await listModels(currentApiKey());
    ui.model.textContent = model.accepts_images ? model.id : `${model.id} (text only)`;
  } catch (error) {
    model = null;
    ui.model.textContent = `model unknown: ${error.message}`;
    if (error.status === 401) askForApiKey();
  }
  ui.badge.hidden = !model?.demo;
  setContextLength(model?.max_model_len ?? null);
  // Unknown model: let the user try, the server's answer will say.
  const refusesImages = model !== null && !model.accepts_images;
  ui.file.disabled = refusesImages;
  ui.attach.classList.toggle("disabled", refusesImages);
  ui.attach.title = refusesImages ? `${model.id} reads text only: it cannot see images` : ATTACH_TITLE;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  document.body.dataset.busy = busy;
}

function save() {
  conversation.updated = Date.now();
  if (!conversations.includes(conversation)) conversations.unshift(conversation);
  conversations.sort((a, b) => b.updated - a.updated);
  saveConversations(conversations, conversation.id);
  renderList();
}

function actionsOf(message) {
  if (message.role === "user") return ["edit"];
  const last = conversation.messages.findLast((m) => m.role !== "error");
  if (message !== last || message.role !== "assistant") return [];
  const cutShort = message.finish === "length" || message.state === "stopped";
  return cutShort ? ["regenerate", "continue"] : ["regenerate"];
}

const refresh = (message) => fillMessage(elements.get(message), message, actionsOf(message));

function renderConversation() {
  elements = new Map();
  ui.messages.replaceChildren();
  for (const message of conversation.messages) {
    elements.set(message, addMessage(ui.messages, message));
    refresh(message);
  }
  scrollToEnd(ui.messages, true);
}

function renderList() {
  renderConversationList(ui.list, conversations, conversation.id, {
    open: (c) => switchTo(c),
    rename: (c) => {
      const title = prompt("Rename the conversation", titleOf(c))?.trim();
      if (!title) return;
      c.title = title;
      saveConversations(conversations, conversation.id);
      renderList();
    },
    remove: (c) => {
      if (!confirm(`Delete "${titleOf(c)}"?`)) return;
      conversations.splice(conversations.indexOf(c), 1);
      deleteImages(c.id);
      if (c === conversation) switchTo(newConversation());
      else saveConversations(conversations, conversation.id);
      renderList();
    },
  });
}

function switchTo(next) {
  controller?.abort();
  conversation = next;
  saveConversations(conversations, conversation.id);
  renderConversation();
  renderList();
}

function requestBody(reply) {
  const { system, ...sampling } = requestSettings();
  const messages = requestMessages(conversation.messages, reply);
  const body = { messages: system ? [{ role: "system", content: system }, ...messages] : messages };
  if (model) body.model = model.id;
  // A reply with text is taken up where it stopped: the server leaves it open (vLLM's
  // continue_final_message) rather than answering it with a new message.
  if (reply.text) Object.assign(body, { continue_final_message: true, add_generation_prompt: false });
  return { ...body, ...sampling };
}

// Streams into `reply` (the last message; empty, or with text to continue).
async function stream(reply) {
  reply.state = "streaming";
  reply.finish = reply.stats = undefined;
  if (!elements.has(reply)) elements.set(reply, addMessage(ui.messages, reply));
  refresh(reply);
  save();
  controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let firstToken = null;
  let numTokens = 0;
  const onDelta = (delta, n) => {
    firstToken ??= performance.now();
    reply.text += delta;
    numTokens += n;
    refresh(reply);
    scrollToEnd(ui.messages);
  };
  try {
    const { usage, finishReason } = await streamWithRoom(reply, onDelta);
    reply.state = "done";
    reply.finish = finishReason;
    reply.stats = timings(started, firstToken, usage?.completion_tokens ?? numTokens);
  } catch (error) {
    if (error.name === "AbortError") {
      // Keep what came: the next turn sees the reply as far as it got.
      reply.state = "stopped";
      reply.stats = `stopped · ${timings(started, firstToken, numTokens)}`;
    } else {
      fail(reply, error);
    }
  } finally {
    controller = null;
    setBusy(false);
    save();
    renderConversation();
  }
}

// A conversation too long for the context loses its oldest turns (marked) until it fits.
async function streamWithRoom(reply, onDelta) {
  for (;;) {
    try {
      return await streamChat(requestBody(reply), currentApiKey(), controller.signal, onDelta);
    } catch (error) {
      if (error.code !== "context_length_exceeded") throw error;
      if (!dropOldestTurn(conversation.messages, reply)) throw error;
      conversation.messages.filter((m) => m.dropped).forEach(refresh);
    }
  }
}

function fail(reply, error) {
  const messages = conversation.messages;
  let at = messages.indexOf(reply) + 1;
  if (!reply.text) {
    // Nothing came: the question went unanswered, so it is not part of the conversation.
    messages.splice(--at, 1);
    if (messages[at - 1]?.role === "user") messages[at - 1].notSent = true;
  } else {
    reply.state = "stopped";
  }
  messages.splice(at, 0, { role: "error", text: `Error ${error.message}`, state: "error" });
  if (error.status === 401) askForApiKey();
}

function timings(started, firstToken, numTokens) {
  if (firstToken === null) return "no tokens";
  const seconds = (performance.now() - firstToken) / 1000;
  const rate = seconds > 0 && numTokens > 1 ? ((numTokens - 1) / seconds).toFixed(1) : "–";
  const ttft = ((firstToken - started) / 1000).toFixed(2);
  return `first token ${ttft} s · ${rate} tok/s · ${numTokens} tokens`;
}

// `imagesId`: an edited question's, whose images are kept already.
function ask(text, images, imagesId = undefined) {
  conversation.messages.push({ role: "user", text, images, imagesId });
  elements.set(conversation.messages.at(-1), addMessage(ui.messages, conversation.messages.at(-1)));
  refresh(conversation.messages.at(-1));
  const reply = { role: "assistant", text: "" };
  conversation.messages.push(reply);
  stream(reply);
}

function send() {
  const text = ui.prompt.value.trim();
  if ((!text && attached.length === 0) || controller) return;
  ui.prompt.value = "";
  const images = attached;
  attached = [];
  renderThumbs();
  ask(text, images);
}

async function onAction(event) {
  const button = event.target.closest("button[data-action]");
  if (!button || controller) return;
  const element = button.closest(".msg");
  const message = [...elements].find(([, e]) => e === element)[0];
  const messages = conversation.messages;
  if (button.dataset.action === "continue") {
    messages.splice(messages.indexOf(message) + 1); // the error notes after it
    stream(message);
  } else if (button.dataset.action === "regenerate") {
    messages.splice(messages.indexOf(message));
    renderConversation();
    messages.push({ role: "assistant", text: "" });
    stream(messages.at(-1));
  } else {
    const text = await editInPlace(element, message.text);
    if (text === null || controller) return refresh(message);
    messages.splice(messages.indexOf(message));
    renderConversation();
    ask(text, message.images, message.imagesId);
  }
}

async function attach(files) {
  if (ui.file.disabled) {
    notice(ui.attach.title);
    return;
  }
  for (const file of mediaFiles(files)) {
    try {
      attached.push(await readAttachment(file));
    } catch (error) {
      notice(`could not read ${file.name}: ${error.message}`);
    }
  }
  renderThumbs();
}

// A note in the conversation's place that is not part of it (not kept).
function notice(text) {
  fillMessage(addMessage(ui.messages, { role: "error" }), { role: "error", text, state: "error" });
  scrollToEnd(ui.messages, true);
}

function renderThumbs() {
  showThumbs(ui.thumbs, attached, (i) => {
    attached.splice(i, 1);
    renderThumbs();
  });
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.prompt.addEventListener("keydown", (event) => {
  // isComposing: Enter that confirms an IME composition is not a send.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.stop.addEventListener("click", () => controller?.abort());
ui.newChat.addEventListener("click", () => switchTo(newConversation()));
ui.messages.addEventListener("click", onAction);
handleCopyButtons(ui.messages);
ui.file.addEventListener("change", () => {
  attach(ui.file.files);
  ui.file.value = ""; // choosing the same file again still fires "change"
});
ui.prompt.addEventListener("paste", (event) => {
  const files = mediaFiles(event.clipboardData?.files);
  if (files.length > 0) {
    event.preventDefault();
    attach(files);
  }
});
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  ui.composer.classList.add("dragging");
});
document.addEventListener("dragleave", () => ui.composer.classList.remove("dragging"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.composer.classList.remove("dragging");
  attach(event.dataTransfer?.files);
});
restoreSettings(loadModel);
setBusy(false);
renderConversation();
renderList();
loadModel();
