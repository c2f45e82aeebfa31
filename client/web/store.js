// What the page keeps in this browser (localStorage), so a reload loses nothing: the
// API key, the settings, and the conversations with the one last open.

const KEYS = {
  apiKey: "edgechat.apiKey",
  settings: "edgechat.settings",
  conversations: "edgechat.conversations",
  current: "edgechat.current",
};

function read(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback; // written by another version of the page: start afresh
  }
}

export const loadApiKey = () => localStorage.getItem(KEYS.apiKey) ?? "";
export const saveApiKey = (key) => localStorage.setItem(KEYS.apiKey, key);
export const loadSettings = () => read(KEYS.settings, {});
export const saveSettings = (settings) =>
  localStorage.setItem(KEYS.settings, JSON.stringify(settings));

// Conversations, newest first: { id, title, updated, messages }.
export function loadConversations() {
  const conversations = read(KEYS.conversations, []);
  for (const message of conversations.flatMap((c) => c.messages)) {
    // A reply that was streaming when the page went away got as far as it was saved.
    if (message.state === "streaming") message.state = "stopped";
  }
  return conversations;
}

export const loadCurrentId = () => localStorage.getItem(KEYS.current);

// Keeps those of `conversations` with messages, and which one is open.
export function saveConversations(conversations, currentId) {
  const kept = conversations.filter((c) => c.messages.length > 0);
  localStorage.setItem(KEYS.current, currentId);
  try {
    localStorage.setItem(KEYS.conversations, JSON.stringify(kept));
  } catch {
    // Over the browser's quota (~5 MB), which images fill first: keep the words.
    const words = kept.map((c) => ({
      ...c,
      messages: c.messages.map((m) => ({ ...m, images: [] })),
    }));
    localStorage.setItem(KEYS.conversations, JSON.stringify(words));
  }
}
