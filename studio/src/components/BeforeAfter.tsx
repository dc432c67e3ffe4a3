import { useEffect, useState } from "react";
import { previewUrl } from "../api";

/** The input and the result in one frame, a slider showing how much of each. */
export function BeforeAfter({ before, after }: { before: string; after: string }) {
  const [pos, setPos] = useState(50);
  const [urls, setUrls] = useState<[string, string] | null>(null);
  useEffect(() => {
    let live = true;
    Promise.all([previewUrl(before, 1024), previewUrl(after, 1024)]).then((u) => live && setUrls(u), () => undefined);
    return () => { live = false; };
  }, [before, after]);
  if (!urls) return <p>Loading the comparison…</p>;
  return (
    <div className="before-after" data-testid="before-after">
      <div className="ba-frame">
        <img src={urls[1]} alt="result" data-testid="result-image" data-artifact={after} />
        <div className="ba-before" style={{ width: `${pos}%` }}>
          <img src={urls[0]} alt="input" data-testid="input-image" />
        </div>
        <div className="ba-line" style={{ left: `${pos}%` }} />
      </div>
      <input type="range" min={0} max={100} value={pos} onChange={(e) => setPos(Number(e.target.value))}
        aria-label="before / after" data-testid="before-after-slider" />
      <div className="ba-labels"><span>input</span><span>result</span></div>
    </div>
  );
}
