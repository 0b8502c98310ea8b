// Draws a bitmap's dirty extents on a canvas strip that spans the whole node: one column per
// size/width bytes; a column is red when any byte in it is dirty. The canvas carries what it drew
// in data attributes (extents, pixels, bytes) so tests and tools can read the picture as numbers.

const DIRTY = '#dc2626';
const CLEAN = '#e5e7eb';

export function drawDirtyMap(canvas, nodeSize, extents) {
  const width = Math.max(64, Math.floor(canvas.clientWidth || 600));
  const height = Math.max(8, Math.floor(canvas.clientHeight || 18));
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const g = canvas.getContext('2d');
  g.fillStyle = CLEAN;
  g.fillRect(0, 0, width, height);

  const columns = new Uint8Array(width);
  let bytes = 0;
  const scale = nodeSize > 0 ? width / nodeSize : 0;
  for (const e of extents) {
    bytes += e.length;
    // A dirty range always shows at least one column, however small it is next to the node.
    const x0 = Math.min(width - 1, Math.floor(e.offset * scale));
    const x1 = Math.max(x0 + 1, Math.min(width, Math.ceil((e.offset + e.length) * scale)));
    columns.fill(1, x0, x1);
  }
  g.fillStyle = DIRTY;
  let pixels = 0;
  for (let x = 0; x < width; x++) {
    if (!columns[x]) continue;
    let end = x;
    while (end < width && columns[end]) end++;
    g.fillRect(x, 0, end - x, height);
    pixels += end - x;
    x = end - 1;
  }
  canvas.dataset.dirtyExtents = String(extents.length);
  canvas.dataset.dirtyPixels = String(pixels);
  canvas.dataset.dirtyBytes = String(bytes);
  canvas.dataset.width = String(width);
  canvas.dataset.draws = String(Number(canvas.dataset.draws || 0) + 1);
  canvas.title = `${extents.length} dirty extent(s), ${bytes} bytes`;
}
