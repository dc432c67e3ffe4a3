import { useEffect, useRef, useState } from "react";
import { previewUrl } from "../api";
import type { Artifact } from "../types";

/** The service's preview of an artifact, fetched only once it scrolls into view; none is asked for an artifact
 * without a picture (a dataset's tar, a text file: the service would answer 422), which shows its type. */
export function Thumb({ art, size = 256, testid, eager = false }: { art: Artifact | string; size?: 256 | 1024;
  testid?: string; eager?: boolean }) {
  const id = typeof art === "string" ? art : art.id;
  const label = typeof art === "string" ? art : art.filename;
  const ref = useRef<HTMLDivElement>(null);
  const picture = typeof art === "string" || /^(image|video)\//.test(art.content_type);
  const [visible, setVisible] = useState(eager);
  const [src, setSrc] = useState<string | null>(null);
  const [failed, setFailed] = useState<string | null>(null);

  useEffect(() => {
    if (visible || !picture || !ref.current) return;
    const io = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) { setVisible(true); io.disconnect(); }
    }, { rootMargin: "200px" });
    io.observe(ref.current);
    return () => io.disconnect();
  }, [visible, picture]);

  useEffect(() => {
    if (!visible || !picture) return;
    let live = true;
    setSrc(null);
    setFailed(null);
    previewUrl(id, size).then((u) => live && setSrc(u), (e: Error) => live && setFailed(e.message));
    return () => { live = false; };
  }, [id, size, visible, picture]);

  return (
    <div ref={ref} className={`thumb s${size}`}>
      {src ? <img src={src} alt={label} data-testid={testid} data-artifact={id} />
        : <span className="placeholder" title={failed ?? undefined}>
          {!picture ? (art as Artifact).content_type : failed ? "no preview" : "…"}</span>}
    </div>
  );
}
