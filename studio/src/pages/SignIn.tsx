import { useState, type FormEvent } from "react";
import { useLocation, useNavigate } from "react-router-dom";
import { useAuth } from "../auth";

export function SignInPage() {
  const { signIn } = useAuth();
  const [key, setKey] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const navigate = useNavigate();
  const from = (useLocation().state as { from?: string } | null)?.from;

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await signIn(key.trim());
      navigate(from && from !== "/signin" ? from : "/", { replace: true });
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  }

  return (
    <form className="signin card" onSubmit={submit} data-testid="signin-form">
      <h1>Media Lab studio</h1>
      <label>API key
        <input type="password" autoComplete="off" value={key} onChange={(e) => setKey(e.target.value)}
          data-testid="signin-key" placeholder="ml_…" required />
      </label>
      <p className="hint">Kept in this tab only (sessionStorage); closing the tab signs you out.</p>
      <button type="submit" disabled={busy || !key.trim()} data-testid="signin-button">Sign in</button>
      {error && <p className="error" data-testid="signin-error">{error}</p>}
    </form>
  );
}
