// Images are downscaled in the browser before upload: edge links are slow, and the
// vision towers work at a few hundred pixels anyway (672 is LLaVA-1.6's tile size).

export const MAX_SIDE = 672;

// A JPEG data URL of `file` whose longest side is at most MAX_SIDE.
export async function downscale(file) {
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const context = canvas.getContext("2d");
  // JPEG has no alpha: transparent pixels would turn black without a white ground.
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return canvas.toDataURL("image/jpeg", 0.85);
}

// The image files among a drop's or a paste's items.
export function imageFiles(list) {
  return Array.from(list ?? []).filter((file) => file.type.startsWith("image/"));
}

// The images waiting to be sent, each with a button that calls onRemove(its index).
export function showThumbs(container, urls, onRemove) {
  container.replaceChildren(
    ...urls.map((url, i) => {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = url;
      img.alt = `attached image ${i + 1}`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove image ${i + 1}`);
      remove.addEventListener("click", () => onRemove(i));
      figure.append(img, remove);
      return figure;
    }),
  );
}
