// The chat page: wires the controls to the API (api.js), the conversation DOM
// (render.js) and image attachments (images.js). The conversation lives only in this
// page: a reload starts afresh. Only the API key is remembered (localStorage).

import { listModels, streamChat } from "./api.js";
import { downscale, imageFiles } from "./images.js";
import { addMessage, renderText, scrollToEnd, setStats } from "./render.js";

const KEY_STORAGE = "edgechat.apiKey";
const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), badge: $("demo-badge"), newChat: $("new-chat"), system: $("system"),
  temperature: $("temperature"), maxTokens: $("max-tokens"), apiKey: $("api-key"),
  messages: $("messages"), composer: $("composer"), thumbs: $("thumbs"), file: $("file"),
  prompt: $("prompt"), send: $("send"), stop: $("stop"),
};

let history = []; // OpenAI messages of the conversation so far
let attached = []; // data URLs waiting for the next message
let modelId = null;
let controller = null; // aborts the reply being streamed

async function loadModel() {
  try {
    const [card] = await listModels(ui.apiKey.value);
    modelId = card.id;
    ui.model.textContent = card.accepts_images ? card.id : `${card.id} (text only)`;
    ui.badge.hidden = !card.demo;
  } catch (error) {
    modelId = null;
    ui.model.textContent = `model unknown: ${error.message}`;
    ui.badge.hidden = true;
  }
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  ui.composer.dataset.busy = busy;
}

function userContent(text, images) {
  if (images.length === 0) return text;
  const parts = images.map((url) => ({ type: "image_url", image_url: { url } }));
  return text ? [{ type: "text", text }, ...parts] : parts;
}

function requestBody() {
  const messages = ui.system.value.trim()
    ? [{ role: "system", content: ui.system.value.trim() }, ...history]
    : history;
  const body = { messages, temperature: Number(ui.temperature.value) };
  if (modelId) body.model = modelId;
  if (ui.maxTokens.value) body.max_tokens = Number(ui.maxTokens.value);
  return body;
}

async function send() {
  const text = ui.prompt.value.trim();
  if ((!text && attached.length === 0) || controller) return;
  const images = attached;
  const userMessage = { role: "user", content: userContent(text, images) };
  history.push(userMessage);
  addMessage(ui.messages, "user", text, images);
  ui.prompt.value = "";
  attached = [];
  renderThumbs();

  const reply = addMessage(ui.messages, "assistant");
  const replyText = reply.querySelector(".text");
  reply.dataset.state = "streaming";
  controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let firstToken = null;
  let content = "";
  let numDeltas = 0;
  try {
    const usage = await streamChat(requestBody(), ui.apiKey.value, controller.signal, (delta) => {
      firstToken ??= performance.now();
      content += delta;
      numDeltas += 1;
      renderText(replyText, content);
      scrollToEnd(ui.messages);
    });
    history.push({ role: "assistant", content });
    reply.dataset.state = "done";
    setStats(reply, timings(started, firstToken, usage?.completion_tokens ?? numDeltas));
  } catch (error) {
    if (error.name === "AbortError") {
      // Keep what came: the next turn sees the reply as far as it got.
      history.push({ role: "assistant", content });
      reply.dataset.state = "stopped";
      setStats(reply, `stopped · ${timings(started, firstToken, numDeltas)}`);
    } else {
      // The request failed as a whole: forget its message, so the next one can succeed.
      history = history.filter((message) => message !== userMessage);
      reply.classList.replace("assistant", "error");
      reply.setAttribute("aria-label", "Error");
      reply.dataset.state = "error";
      renderText(replyText, content);
      setStats(reply, `Error ${error.message}`);
    }
  } finally {
    controller = null;
    setBusy(false);
    scrollToEnd(ui.messages, true);
  }
}

function timings(started, firstToken, numTokens) {
  if (firstToken === null) return "no tokens";
  const seconds = (performance.now() - firstToken) / 1000;
  const rate = seconds > 0 && numTokens > 1 ? ((numTokens - 1) / seconds).toFixed(1) : "–";
  const ttft = ((firstToken - started) / 1000).toFixed(2);
  return `first token ${ttft} s · ${rate} tok/s · ${numTokens} tokens`;
}

async function attach(files) {
  for (const file of imageFiles(files)) {
    try {
      attached.push(await downscale(file));
    } catch (error) {
      addMessage(ui.messages, "error", `could not read ${file.name}: ${error.message}`);
    }
  }
  renderThumbs();
}

function renderThumbs() {
  ui.thumbs.replaceChildren(
    ...attached.map((url, i) => {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = url;
      img.alt = `attached image ${i + 1}`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove image ${i + 1}`);
      remove.addEventListener("click", () => {
        attached.splice(i, 1);
        renderThumbs();
      });
      figure.append(img, remove);
      return figure;
    }),
  );
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
ui.newChat.addEventListener("click", () => {
  controller?.abort();
  history = [];
  ui.messages.replaceChildren();
});
ui.file.addEventListener("change", () => {
  attach(ui.file.files);
  ui.file.value = ""; // choosing the same file again still fires "change"
});
ui.prompt.addEventListener("paste", (event) => {
  const files = imageFiles(event.clipboardData?.files);
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
ui.apiKey.value = localStorage.getItem(KEY_STORAGE) ?? "";
ui.apiKey.addEventListener("change", () => {
  localStorage.setItem(KEY_STORAGE, ui.apiKey.value);
  loadModel();
});
setBusy(false);
loadModel();
