// Model output as rich text: markdown-it (vendored, vendor/refresh.sh) with raw HTML
// off, so every character of a reply reaches the page escaped, never as markup. On
// top of that: only http(s) and mailto links are links, images are never fetched,
// and fenced code is highlighted (highlight.js) under its language and a Copy button.

import markdownit from "./vendor/markdown-it.min.js";
import hljs from "./vendor/highlight.min.js";

// The grammars vendor/refresh.sh fetches (its LANGUAGES); each also brings its aliases
// (py, js, sh, html, ...).
const LANGUAGES = [
  "bash", "c", "cpp", "css", "diff", "go", "java", "javascript", "json", "markdown",
  "python", "rust", "shell", "sql", "typescript", "xml", "yaml",
];
const grammars = await Promise.all(
  LANGUAGES.map((name) => import(`./vendor/highlight-${name}.min.js`)),
);
LANGUAGES.forEach((name, i) => hljs.registerLanguage(name, grammars[i].default));

// Anything else (javascript:, data:, vbscript:, file:, relative) stays plain text.
const SAFE_LINK = /^(https?:|mailto:)/i;
const COPIED_SECONDS = 1.5;

// breaks: a model's single newlines are meant as line breaks.
const md = markdownit({ html: false, linkify: false, breaks: true });
md.validateLink = (url) => SAFE_LINK.test(url.trim());
const { escapeHtml } = md.utils;

md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
  // A new tab that cannot reach back into the page (window.opener).
  tokens[idx].attrSet("target", "_blank");
  tokens[idx].attrSet("rel", "noopener noreferrer");
  return self.renderToken(tokens, idx, options);
};

// An image would be a request to wherever the model pointed: show its description.
md.renderer.rules.image = (tokens, idx, options, env, self) => {
  const alt = self.renderInlineAsText(tokens[idx].children, options, env);
  return `<span class="image-ref">[image not shown${alt ? `: ${escapeHtml(alt)}` : ""}]</span>`;
};

md.renderer.rules.fence = (tokens, idx) => {
  const { content, info } = tokens[idx];
  const language = info.trim().split(/\s+/)[0];
  // hljs escapes what it highlights, as escapeHtml does for unknown languages.
  const code = hljs.getLanguage(language)
    ? hljs.highlight(content, { language, ignoreIllegals: true }).value
    : escapeHtml(content);
  return (
    `<div class="code-block"><div class="code-head">` +
    `<span class="language">${escapeHtml(language || "code")}</span>` +
    `<button type="button" class="copy">Copy</button></div>` +
    `<pre><code class="hljs">${code}</code></pre></div>\n`
  );
};

// Fills `element` with `text` rendered; called again with the longer text at each
// streamed piece (an unclosed ``` fence mid-stream is already a code block).
export function renderMarkdown(element, text) {
  element.innerHTML = md.render(text);
}

// Copy buttons of every code block inside `container`, now and later.
export function handleCopyButtons(container) {
  container.addEventListener("click", async (event) => {
    const button = event.target.closest(".code-block .copy");
    if (!button) return;
    const code = button.closest(".code-block").querySelector("code").textContent;
    await copyText(code);
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), COPIED_SECONDS * 1000);
  });
}

async function copyText(text) {
  // navigator.clipboard exists only in secure contexts: a Jetson's page reached over
  // plain HTTP at its LAN address is not one, so fall back to selecting and copying.
  if (navigator.clipboard) return navigator.clipboard.writeText(text);
  const area = document.createElement("textarea");
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}
