import { createContext, useCallback, useContext, useEffect, useState, type ReactNode } from "react";
import { getMe, session } from "./api";
import type { Me } from "./types";

/** What the signed-in key may do (from GET /v1/me); the server enforces it anyway. */
export interface Abilities {
  run: boolean;
  export: boolean;
  admin: boolean;
  publish: boolean;
  train: boolean;
}

interface AuthState {
  me: Me | null;
  can: Abilities;
  loading: boolean;
  signIn(key: string): Promise<void>;
  signOut(): void;
}

const none: Abilities = { run: false, export: false, admin: false, publish: false, train: false };

export function abilities(me: Me | null): Abilities {
  if (!me) return none;
  const has = (r: string) => me.is_admin || me.roles.includes(r);
  return { run: me.can_run ?? has("run"), export: me.can_export ?? has("export"), admin: me.is_admin,
    publish: me.can_publish ?? has("publish"), train: me.can_train ?? has("train") };
}

const Ctx = createContext<AuthState | null>(null);

export function AuthProvider({ children }: { children: ReactNode }) {
  const [me, setMe] = useState<Me | null>(null);
  const [loading, setLoading] = useState(Boolean(session.key));

  useEffect(() => {
    if (!session.key) return;
    getMe().then(setMe, () => session.clear()).finally(() => setLoading(false));
  }, []);

  const signIn = useCallback(async (key: string) => {
    session.set(key);
    try {
      setMe(await getMe());
    } catch (err) {
      session.clear();
      throw err;
    }
  }, []);
  const signOut = useCallback(() => { session.clear(); setMe(null); }, []);

  return <Ctx.Provider value={{ me, can: abilities(me), loading, signIn, signOut }}>{children}</Ctx.Provider>;
}

export function useAuth(): AuthState {
  const c = useContext(Ctx);
  if (!c) throw new Error("useAuth outside AuthProvider");
  return c;
}
