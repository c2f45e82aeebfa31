// What the page keeps in this browser, so a reload loses nothing: the API key, the
// settings and the conversations with the one last open in localStorage; the images of
// user messages, too big for its ~5 MB, in IndexedDB, one record a message keyed
// "conversation id/message id" (the message's imagesId), deleted with the conversation.

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

const IMAGES = "images";
const database = new Promise((resolve, reject) => {
  const request = indexedDB.open("edgechat", 1);
  request.onupgradeneeded = () => request.result.createObjectStore(IMAGES);
  request.onsuccess = () => resolve(request.result);
  request.onerror = () => reject(request.error);
});

// Runs `work(store)` in one transaction; resolves to its request's result.
async function withImages(mode, work) {
  const transaction = (await database).transaction(IMAGES, mode);
  const request = work(transaction.objectStore(IMAGES));
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve(request?.result);
    transaction.onerror = () => reject(transaction.error);
  });
}

// Without IndexedDB (refused, or over its quota) images are lost on reload, not the words.
const none = () => null;
const imagesKey = (conversation, message) => `${conversation.id}/${message.imagesId}`;
// Every key "id/..." sorts between these two.
const keysOf = (id) => IDBKeyRange.bound(`${id}/`, `${id}/\uffff`);

// Conversations, newest first: { id, title, updated, messages }, their images read back.
export async function loadConversations() {
  const conversations = read(KEYS.conversations, []);
  for (const conversation of conversations) {
    for (const message of conversation.messages) {
      // A reply that was streaming when the page went away got as far as it was saved.
      if (message.state === "streaming") message.state = "stopped";
      if (!message.imagesId) continue;
      const key = imagesKey(conversation, message);
      message.images = (await withImages("readonly", (store) => store.get(key)).catch(none)) ?? [];
    }
  }
  return conversations;
}

export const loadCurrentId = () => localStorage.getItem(KEYS.current);

// Keeps those of `conversations` with messages, and which one is open; images go to
// IndexedDB (a message's once: an id marks them written) and are kept out of the JSON.
export function saveConversations(conversations, currentId) {
  const kept = conversations.filter((c) => c.messages.length > 0);
  localStorage.setItem(KEYS.current, currentId);
  for (const conversation of kept) {
    for (const message of conversation.messages) {
      if (!message.images?.length || message.imagesId) continue;
      message.imagesId = crypto.randomUUID();
      const key = imagesKey(conversation, message);
      withImages("readwrite", (store) => store.put(message.images, key)).catch(none);
    }
  }
  const words = kept.map((c) => ({
    ...c,
    messages: c.messages.map(({ images, ...message }) => message),
  }));
  localStorage.setItem(KEYS.conversations, JSON.stringify(words));
}

export const deleteImages = (conversationId) =>
  withImages("readwrite", (store) => store.delete(keysOf(conversationId))).catch(none);
