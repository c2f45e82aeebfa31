// The Settings panel: the system prompt, temperature, max tokens and API key, kept in
// this browser (store.js); Max tokens left empty means "until the context is full", and
// cannot exceed the model's context.

import { loadApiKey, loadSettings, saveApiKey, saveSettings } from "./store.js";

const $ = (id) => document.getElementById(id);
const panel = $("settings");
const fields = { system: $("system"), temperature: $("temperature"), maxTokens: $("max-tokens") };
const apiKey = $("api-key");
const keyNote = $("key-note");
let maxModelLen = null;

export const currentApiKey = () => apiKey.value;

// Restores the saved values; `onKeyChange` runs when the user changes the API key.
export function restoreSettings(onKeyChange) {
  const saved = loadSettings();
  for (const [name, field] of Object.entries(fields)) {
    if (saved[name] !== undefined) field.value = saved[name];
    field.addEventListener("change", () => {
      clampMaxTokens();
      saveSettings(Object.fromEntries(Object.entries(fields).map(([n, f]) => [n, f.value])));
    });
  }
  apiKey.value = loadApiKey();
  apiKey.addEventListener("change", () => {
    saveApiKey(apiKey.value);
    keyNote.hidden = true;
    onKeyChange();
  });
}

// The model's context length (from /v1/models), or null when unknown.
export function setContextLength(length) {
  maxModelLen = length;
  fields.maxTokens.max = length ?? "";
  clampMaxTokens();
}

function clampMaxTokens() {
  const value = Number(fields.maxTokens.value);
  if (maxModelLen && value > maxModelLen) fields.maxTokens.value = maxModelLen;
}

// The request fields the settings decide.
export function requestSettings() {
  const system = fields.system.value.trim();
  const settings = { system, temperature: Number(fields.temperature.value) };
  if (fields.maxTokens.value) settings.max_tokens = Number(fields.maxTokens.value);
  return settings;
}

// After a 401: opens Settings on the API key field, saying what to do.
export function askForApiKey() {
  panel.open = true;
  keyNote.textContent = apiKey.value
    ? "The server did not accept this API key. Check it, then send your message again."
    : "This server needs an API key. Type it here (it stays in this browser), then send again.";
  keyNote.hidden = false;
  apiKey.focus();
}
