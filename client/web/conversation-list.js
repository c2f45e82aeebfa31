// The list of kept conversations: open one, rename it, delete it.

import { titleOf } from "./conversation.js";

// Fills `list` (a <ul>) with `conversations` (newest first), marking `currentId`;
// handlers: { open(c), rename(c), remove(c) }.
export function renderConversationList(list, conversations, currentId, handlers) {
  const items = conversations
    .filter((c) => c.messages.length > 0 || c.id === currentId)
    .map((conversation) => {
      const item = document.createElement("li");
      const title = titleOf(conversation);
      const open = button(title, `Open ${title}`, () => handlers.open(conversation));
      open.className = "open";
      if (conversation.id === currentId) open.setAttribute("aria-current", "true");
      item.append(
        open,
        button("Rename", `Rename ${title}`, () => handlers.rename(conversation)),
        button("Delete", `Delete ${title}`, () => handlers.remove(conversation)),
      );
      return item;
    });
  list.replaceChildren(...items);
}

function button(text, label, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.setAttribute("aria-label", label);
  element.addEventListener("click", onClick);
  return element;
}
