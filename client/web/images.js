// Attachments: images are downscaled in the browser before upload (edge links are slow,
// and the vision towers work at a few hundred pixels anyway: 672 is LLaVA-1.6's tile
// size); videos go as they are (the server samples their frames). Both travel, and are
// kept, as data URLs; a video's thumbnail is its first frame, shown by a <video>.

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

// The data URL a file is attached as: an image downscaled, a video unchanged.
export function readAttachment(file) {
  if (!file.type.startsWith("video/")) return downscale(file);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// The image and video files among a drop's, a paste's or the picker's items.
export function mediaFiles(list) {
  return Array.from(list ?? []).filter(
    (file) => file.type.startsWith("image/") || file.type.startsWith("video/"),
  );
}

export const isVideo = (url) => url.startsWith("data:video/");

// An <img>, or for a video a <video> showing its first frame (muted, never played).
export function thumbnail(url, alt) {
  if (!isVideo(url)) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = alt;
    return img;
  }
  const video = document.createElement("video");
  video.muted = true;
  video.preload = "auto";
  video.src = url;
  video.setAttribute("aria-label", alt);
  return video;
}

// The attachments waiting to be sent, each with a button that calls onRemove(its index).
export function showThumbs(container, urls, onRemove) {
  container.replaceChildren(
    ...urls.map((url, i) => {
      const kind = isVideo(url) ? "video" : "image";
      const figure = document.createElement("figure");
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove ${kind} ${i + 1}`);
      remove.addEventListener("click", () => onRemove(i));
      figure.append(thumbnail(url, `attached ${kind} ${i + 1}`), remove);
      return figure;
    }),
  );
}
