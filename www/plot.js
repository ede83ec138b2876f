// Drawing helpers for the page: line plots of loss curves, heatmaps of alignment weights and of
// cross-attention over an image. Plain canvas 2D, no library.

const COLOURS = { ce: '#1f77b4', kd: '#ff7f0e', attn: '#2ca02c', total: '#222' };

// series: {name: [[x, y], ...]}; draws all on one canvas with a legend.
export function linePlot(canvas, series) {
  const g = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  g.clearRect(0, 0, w, h);
  const pts = Object.values(series).flat();
  if (pts.length === 0) return;
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]).filter(Number.isFinite);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys, 1e-6)];
  const pad = 36;
  const X = (x) => pad + ((x - x0) / (x1 - x0)) * (w - pad - 8);
  const Y = (y) => h - pad + 12 - ((y - y0) / (y1 - y0)) * (h - pad - 8);
  g.strokeStyle = '#999';
  g.beginPath();
  g.moveTo(pad, 4);
  g.lineTo(pad, h - pad + 12);
  g.lineTo(w - 4, h - pad + 12);
  g.stroke();
  g.fillStyle = '#555';
  g.font = '11px sans-serif';
  g.fillText(y1.toFixed(2), 2, 12);
  g.fillText(y0.toFixed(2), 2, h - pad + 12);
  g.fillText(`step ${x0}`, pad, h - 8);
  g.fillText(`${x1}`, w - 30, h - 8);
  let legend = pad + 8;
  for (const [name, data] of Object.entries(series)) {
    g.strokeStyle = COLOURS[name] || '#888';
    g.beginPath();
    data.forEach(([x, y], i) => (i ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y))));
    g.stroke();
    g.fillStyle = g.strokeStyle;
    g.fillText(name, legend, 14);
    legend += 40;
  }
}

// A rows × cols matrix in [0, 1] as a heatmap with its values written in.
export function heatmap(canvas, matrix, title) {
  const rows = matrix.length;
  const cols = rows ? matrix[0].length : 0;
  const cell = 22;
  canvas.width = Math.max(cols * cell + 30, 130);
  canvas.height = rows * cell + 30;
  const g = canvas.getContext('2d');
  g.font = '10px sans-serif';
  g.fillStyle = '#333';
  g.fillText(title, 2, 10);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const v = Math.max(0, Math.min(1, matrix[i][j]));
      g.fillStyle = `rgb(${255 - 200 * v}, ${255 - 120 * v}, 255)`;
      g.fillRect(28 + j * cell, 16 + i * cell, cell - 1, cell - 1);
      g.fillStyle = v > 0.6 ? '#fff' : '#333';
      g.fillText(v.toFixed(2).slice(1), 30 + j * cell, 30 + i * cell);
    }
    g.fillStyle = '#333';
    g.fillText(`t${i}`, 2, 30 + i * cell);
  }
}

// Attention over a grid × grid image (values per patch) drawn as red over the image's canvas.
export function attentionOverlay(canvas, values, grid) {
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (!values) return;
  const max = Math.max(...values, 1e-9);
  const s = canvas.width / grid;
  for (let p = 0; p < values.length; p++) {
    g.fillStyle = `rgba(255, 0, 0, ${(0.75 * values[p]) / max})`;
    g.fillRect((p % grid) * s, Math.floor(p / grid) * s, s, s);
  }
}
