// The refinement chart: per iteration, the loss (line, left scale) and the detected counts (dots, right
// scale) against the count asked for (dashed). Inline SVG built with DOM calls: no library, no inline style.

const SVG = "http://www.w3.org/2000/svg";
const W = 420, H = 160, PAD = { left: 44, right: 36, top: 14, bottom: 26 };

function node(name, attrs = {}, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function format(value) {
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  return magnitude >= 100 ? value.toFixed(0) : magnitude >= 1 ? value.toFixed(2) : value.toPrecision(2);
}

/**
 * @param {SVGSVGElement} svg the chart's element (its children are replaced)
 * @param {{iteration: number, loss: number|null, counts: number[]}[]} points in iteration order
 * @param {number} target the count asked for
 */
export function renderChart(svg, points, target) {
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  if (!points.length) return;
  const x0 = PAD.left, x1 = W - PAD.right, y0 = H - PAD.bottom, y1 = PAD.top;
  const first = points[0].iteration, last = Math.max(points[points.length - 1].iteration, first + 1);
  const inset = 8; // the first and last points clear the frame
  const x = (it) => x0 + inset + ((it - first) / (last - first)) * (x1 - x0 - 2 * inset);

  const losses = points.map((p) => p.loss).filter((v) => typeof v === "number" && Number.isFinite(v));
  let lo = Math.min(...losses, 0), hi = Math.max(...losses, 0);
  if (hi === lo) hi = lo + 1;
  const yLoss = (v) => y0 - ((v - lo) / (hi - lo)) * (y0 - y1);
  const counts = points.flatMap((p) => p.counts);
  const top = Math.max(target * 2, ...counts, 1);
  const yCount = (v) => y0 - (v / top) * (y0 - y1);

  svg.append(
    node("rect", { class: "chart-frame", x: x0, y: y1, width: x1 - x0, height: y0 - y1 }),
    node("line", { class: "chart-target", x1: x0, x2: x1, y1: yCount(target), y2: yCount(target) }),
    node("text", { class: "chart-axis", x: x0 - 6, y: y1 + 4, "text-anchor": "end" }, format(hi)),
    node("text", { class: "chart-axis", x: x0 - 6, y: y0, "text-anchor": "end" }, format(lo)),
    node("text", { class: "chart-axis chart-count-axis", x: x1 + 6, y: y1 + 4 }, String(top)),
    node("text", { class: "chart-axis chart-count-axis", x: x1 + 6, y: yCount(target) + 4 }, String(target)),
    node("text", { class: "chart-axis chart-count-axis", x: x1 + 6, y: y0 }, "0"),
    node("text", { class: "chart-axis", x: x0, y: H - 6 }, `iteration ${first}`),
    node("text", { class: "chart-axis", x: x1, y: H - 6, "text-anchor": "end" }, `${last}`),
  );
  if (losses.length) {
    const path = points.filter((p) => typeof p.loss === "number" && Number.isFinite(p.loss))
      .map((p, i) => `${i ? "L" : "M"}${x(p.iteration).toFixed(1)},${yLoss(p.loss).toFixed(1)}`).join(" ");
    svg.append(node("path", { class: "chart-loss", d: path }));
  }
  for (const p of points) {
    for (const c of p.counts) {
      const dot = node("circle", { class: c === target ? "chart-count hit" : "chart-count", cx: x(p.iteration),
        cy: yCount(c), r: 3.5 });
      dot.append(node("title", {}, `iteration ${p.iteration}: ${c} detected`));
      svg.append(dot);
    }
  }
  svg.prepend(node("title", {}, `Refinement: loss and detected counts over ${points.length} iterations; ` +
    `the dashed line is the count asked for (${target}).`));
}
