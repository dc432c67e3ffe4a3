/** A training run's loss by step, as inline SVG (no chart library). */
export function LossPlot({ points, width = 560, height = 200 }: { points: { step: number; loss: number }[];
  width?: number; height?: number }) {
  if (points.length === 0) return <p className="hint" data-testid="loss-plot-empty">No loss reported yet.</p>;
  const pad = 36;
  const xs = points.map((p) => p.step);
  const ys = points.map((p) => p.loss);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x: number) => pad + ((x - x0) / (x1 - x0 || 1)) * (width - 2 * pad);
  const sy = (y: number) => height - pad - ((y - y0) / (y1 - y0 || 1)) * (height - 2 * pad);
  const d = points.map((p, i) => `${i ? "L" : "M"}${sx(p.step).toFixed(1)},${sy(p.loss).toFixed(1)}`).join(" ");
  return (
    <svg className="loss-plot" width={width} height={height} viewBox={`0 0 ${width} ${height}`} role="img"
      aria-label="loss by step" data-testid="loss-plot">
      <line x1={pad} y1={height - pad} x2={width - pad} y2={height - pad} stroke="#999" />
      <line x1={pad} y1={pad} x2={pad} y2={height - pad} stroke="#999" />
      <text x={pad} y={height - 10} fontSize="11">step {x0}</text>
      <text x={width - pad} y={height - 10} fontSize="11" textAnchor="end">{x1}</text>
      <text x={4} y={pad} fontSize="11">{y1.toPrecision(3)}</text>
      <text x={4} y={height - pad} fontSize="11">{y0.toPrecision(3)}</text>
      <path d={d} fill="none" stroke="#2463eb" strokeWidth="1.5" />
    </svg>
  );
}
