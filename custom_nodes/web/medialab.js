// The Media Lab panel of ComfyUI's editor (frontend 1.32, ComfyUI 0.3.75): sign in to the orchestrator, open
// a template version onto the canvas, make a node's input a template parameter, review and publish the graph
// as a new version. Every call goes to this ComfyUI server's own routes (custom_nodes/editor.py), which keep
// the API key and send the calls on: the key never sits in this page and no request leaves this origin.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const ROUTES = "/medialab/editor";
const KINDS = ["image", "video", "audio", "model", "other"];
const MODEL_FILE = /\.(safetensors|ckpt|pt|pth|bin|gguf|onnx|sft)$/i;
const PARAM_NODES = { INT: "MediaLabParamInt", FLOAT: "MediaLabParamFloat", STRING: "MediaLabParamText",
                      BOOLEAN: "MediaLabParamBool" };
// a loader whose file input becomes a parameter by the loader's stand-in (same outputs), named after what it loads
const LOADERS = {
  LoadImage: { input: "image", type: "MediaLabParamImage", carrier: "image", name: "image" },
  LoadVideo: { input: "file", type: "MediaLabParamVideo", carrier: "file", name: "video" },
};
const state = { session: null, templates: [], review: null, root: null };

// -- the pack's routes ---------------------------------------------------------------------------------------
async function call(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await api.fetchApi(ROUTES + path, init);
  let data = null;
  try { data = await r.json(); } catch { data = { detail: `${r.status} ${r.statusText}` }; }
  if (!r.ok) {
    const err = new Error(data?.detail || `${r.status} ${r.statusText}`);
    Object.assign(err, { status: r.status, data });
    throw err;
  }
  return data;
}

// -- the graph -----------------------------------------------------------------------------------------------
function currentWorkflow() {
  return app.graph.serialize();
}

function origin() {
  return app.graph.extra?.medialab ?? null;  // {template, version, content_hash} of the version opened
}

function setOrigin(template, version) {
  app.graph.extra = app.graph.extra ?? {};
  app.graph.extra.medialab = { ...(app.graph.extra.medialab ?? {}), template, version };
}

function nodeById(id) {
  return app.graph.getNodeById(Number(id)) ?? app.graph.getNodeById(id);  // the orchestrator names ids as strings
}

function showNodeErrors(nodes) {
  // the shape of a failed /prompt's node_errors, which the frontend draws on the nodes (red outline, inputs)
  const errors = {};
  for (const p of nodes ?? []) {
    const node = nodeById(p.node);
    const entry = errors[p.node] ?? { errors: [], class_type: node?.type ?? "", dependent_outputs: [] };
    entry.errors.push({ type: "medialab_publish", message: p.message, details: p.message,
                        extra_info: p.input ? { input_name: p.input } : {} });
    errors[p.node] = entry;
  }
  // app.lastNodeErrors has no setter: it reads the frontend's execution store, which a failed /prompt sets too
  const execution = document.querySelector("#vue-app")?.__vue_app__?.config.globalProperties.$pinia?._s.get("execution");
  if (execution) execution.lastNodeErrors = Object.keys(errors).length ? errors : null;
  app.graph.setDirtyCanvas(true, true);
}

function showBounds(x0, y0, x1, y1, maxScale) {
  // the canvas lies under this panel too: fit the bounds into the part of it that is seen
  const ds = app.canvas.ds;
  const rect = app.canvas.canvas.getBoundingClientRect();
  const left = Math.max(rect.left, state.root?.getBoundingClientRect().right ?? rect.left);
  const top = rect.top + 60;  // under the breadcrumb bar
  const w = Math.max(rect.right - left, 100), h = Math.max(rect.bottom - top, 100);
  const bw = Math.max(x1 - x0, 1), bh = Math.max(y1 - y0, 1);
  ds.scale = Math.min(maxScale, 0.9 * Math.min(w / bw, h / bh));
  // a canvas point p lands at client (p + offset) * scale + rect.left
  ds.offset[0] = (left + (w - bw * ds.scale) / 2 - rect.left) / ds.scale - x0;
  ds.offset[1] = (top + (h - bh * ds.scale) / 2 - rect.top) / ds.scale - y0;
  app.canvas.setDirty(true, true);
}

function nodeBounds(nodes) {
  return [Math.min(...nodes.map((n) => n.pos[0])), Math.min(...nodes.map((n) => n.pos[1] - 30)),
          Math.max(...nodes.map((n) => n.pos[0] + n.size[0])), Math.max(...nodes.map((n) => n.pos[1] + n.size[1]))];
}

function fitView() {
  if (app.graph.nodes.length) showBounds(...nodeBounds(app.graph.nodes), 1.25);
}

function focusNode(id) {
  const node = nodeById(id);
  if (!node) return;
  const [x0, y0, x1, y1] = nodeBounds([node]);
  showBounds(x0 - 200, y0 - 150, x1 + 200, y1 + 150, 1.25);
  app.canvas.selectNode?.(node);
}

// -- "make a parameter" from a node's context menu -----------------------------------------------------------
function paramName(text) {
  const name = String(text).toLowerCase().replace(/[^a-z0-9_]+/g, "_").replace(/^([0-9])/, "_$1");
  return name || "param";
}

function setWidget(node, name, value, { callback = true } = {}) {
  // without the callback a number keeps every digit (the editor's own rounds it to the widget's step)
  const w = node.widgets?.find((x) => x.name === name);
  if (w && value !== undefined) {
    w.value = value;
    if (callback) w.callback?.(value, app.canvas, node);
  }
}

async function modelFolder(file) {
  try {
    return (await call("GET", `/model-folder?file=${encodeURIComponent(file)}`)).folders[0] ?? null;
  } catch {
    return null;
  }
}

async function makeParameter(node, widget) {
  const slot = node.inputs?.findIndex((i) => i.widget?.name === widget.name) ?? -1;
  if (slot < 0) throw new Error(`${node.title}: input ${widget.name} has no socket to link to`);
  const kind = String(node.inputs[slot].type);  // INT, FLOAT, STRING, BOOLEAN or COMBO
  const values = widget.options?.values;
  let type = PARAM_NODES[kind] ?? null;
  let folder = null;
  if (kind === "COMBO" && Array.isArray(values)) {
    folder = typeof widget.value === "string" && MODEL_FILE.test(widget.value) ? await modelFolder(widget.value) : null;
    type = folder ? "MediaLabParamModel" : "MediaLabParamChoice";
  }
  if (!type) throw new Error(`${node.title}: input ${widget.name} (${kind}) cannot be a parameter`);
  const param = LiteGraph.createNode(type);
  const name = paramName(widget.name);
  app.graph.add(param);
  param.pos = freeSpotBelow(node, param);
  setWidget(param, "name", name);
  setWidget(param, "value", widget.value, { callback: false });
  if (type === "MediaLabParamChoice") setWidget(param, "choices", values.join(","));
  if (type === "MediaLabParamModel") setWidget(param, "folder", folder);
  for (const bound of ["min", "max"]) {
    const limit = widget.options?.[bound];
    const fits = kind === "INT" ? Number.isSafeInteger(limit) : Number.isFinite(limit);
    if (fits && param.widgets?.some((w) => w.name === bound)) {
      setWidget(param, bound, limit, { callback: false });
    }
  }
  param.connect(0, node, slot);
  app.graph.setDirtyCanvas(true, true);
  return param;
}

function replaceLoader(node) {
  // the loader's stand-in parameter node, with the same outputs, takes its place and its links
  const { input, type, carrier, name } = LOADERS[node.type];
  const param = LiteGraph.createNode(type);
  app.graph.add(param);
  param.pos = [node.pos[0] + node.size[0] - param.size[0], node.pos[1]];  // its right edge where the loader's was
  setWidget(param, "name", name);
  setWidget(param, carrier, node.widgets?.find((w) => w.name === input)?.value, { callback: false });
  (node.outputs ?? []).forEach((output, slot) => {
    for (const id of [...(output.links ?? [])]) {
      const link = app.graph.links instanceof Map ? app.graph.links.get(id) : app.graph.links[id];
      const target = link && app.graph.getNodeById(link.target_id);
      if (target) param.connect(slot, target, link.target_slot);
    }
  });
  app.graph.remove(node);
  app.graph.setDirtyCanvas(true, true);
  return param;
}

function freeSpotBelow(node, placed) {
  // under the node, moved further down past every node in the way
  const [w, h] = placed.size;
  const pos = [node.pos[0], node.pos[1] + node.size[1] + 50];
  const overlaps = (n) => n !== placed && n.pos[0] < pos[0] + w && pos[0] < n.pos[0] + n.size[0]
    && n.pos[1] - 30 < pos[1] + h && pos[1] - 30 < n.pos[1] + n.size[1];
  for (let blocker = app.graph.nodes.find(overlaps); blocker; blocker = app.graph.nodes.find(overlaps)) {
    pos[1] = blocker.pos[1] + blocker.size[1] + 50;
  }
  return pos;
}

function parameterItems(node) {
  const linked = new Set((node.inputs ?? []).filter((i) => i.widget && i.link != null).map((i) => i.widget.name));
  const widgets = (node.widgets ?? []).filter((w) => node.inputs?.some((i) => i.widget?.name === w.name)
                                                      && !linked.has(w.name));
  if (!widgets.length || node.type?.startsWith("MediaLabParam")) return [];
  return [{
    content: "Media Lab: make a parameter",
    has_submenu: true,
    submenu: {
      options: widgets.map((w) => ({
        content: w.name,
        callback: () => (LOADERS[node.type]?.input === w.name ? Promise.resolve().then(() => replaceLoader(node))
          : makeParameter(node, w)).catch((e) => toast("error", "Media Lab", e.message)),
      })),
    },
  }];
}

// -- the panel -------------------------------------------------------------------------------------------
function toast(severity, summary, detail) {
  app.extensionManager?.toast?.add({ severity, summary, detail, life: 6000 });
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "testid") node.dataset.testid = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "style") node.style.cssText = v;
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const STYLE = `
.ml-panel { padding: 10px; display: flex; flex-direction: column; gap: 12px; font-size: 13px; overflow-y: auto;
            height: 100%; box-sizing: border-box; }
.ml-panel h3 { margin: 0 0 6px; font-size: 14px; }
.ml-panel section { border: 1px solid var(--border-color, #444); border-radius: 6px; padding: 8px; }
.ml-panel label { display: flex; flex-direction: column; gap: 2px; margin-bottom: 6px; }
.ml-panel input, .ml-panel select, .ml-panel textarea { background: var(--comfy-input-bg, #222);
            color: var(--input-text, #ddd); border: 1px solid var(--border-color, #555); padding: 4px; }
.ml-panel button { cursor: pointer; padding: 4px 10px; margin: 2px 4px 2px 0; }
.ml-panel table { border-collapse: collapse; width: 100%; table-layout: fixed; font-size: 12px; }
.ml-panel td, .ml-panel th { border-bottom: 1px solid var(--border-color, #444); padding: 2px 4px; text-align: left;
            vertical-align: top; overflow-wrap: anywhere; }
.ml-error { color: #f66; white-space: pre-wrap; }
.ml-ok { color: #6c6; }
.ml-muted { opacity: 0.7; font-size: 12px; }
.ml-scroll { max-height: 40vh; overflow-y: auto; }
.ml-row { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; margin: 3px 0; }
`;

function render() {
  const root = state.root;
  if (!root) return;
  root.replaceChildren(el("style", {}, STYLE), el("div", { class: "ml-panel", testid: "ml-panel" },
    sessionSection(), state.session?.signed_in ? [publishSection(), templatesSection()] : null));
}

function sessionSection() {
  const s = state.session;
  if (!s) return el("section", {}, "Loading…");
  if (s.signed_in) {
    return el("section", {},
      el("h3", {}, "Media Lab"),
      el("div", { testid: "ml-whoami" }, `Signed in to ${s.url} as ${s.name} (${(s.roles ?? []).join(", ")})`),
      s.can_publish ? null : el("div", { class: "ml-error" }, "This key may not publish (it needs the publish role)."),
      el("button", { testid: "ml-signout", onclick: () => run(async () => {
        state.session = await call("DELETE", "/session");
      }) }, "Sign out"));
  }
  const url = el("input", { testid: "ml-url", value: s.orchestrators?.[0] ?? "", placeholder: "http://host:8000",
                            list: "ml-orchestrators" });
  const key = el("input", { testid: "ml-key", type: "password", placeholder: "mlk_…", autocomplete: "off" });
  const error = el("div", { class: "ml-error", testid: "ml-signin-error" }, state.signinError ?? "");
  return el("section", {},
    el("h3", {}, "Media Lab: sign in"),
    el("datalist", { id: "ml-orchestrators" }, (s.orchestrators ?? []).map((o) => el("option", { value: o }))),
    s.orchestrators?.length ? null : el("div", { class: "ml-error" },
      "This ComfyUI server may not sign in to any orchestrator: set MEDIALAB_EDITOR_ORCHESTRATORS in its " +
      "environment and restart it."),
    el("label", {}, "Orchestrator URL", url),
    el("label", {}, "API key (kept by this ComfyUI server, never in the page)", key),
    el("button", { testid: "ml-signin", onclick: () => run(async () => {
      state.signinError = null;
      try {
        state.session = await call("POST", "/session", { url: url.value, api_key: key.value });
        key.value = "";
        await loadTemplates();
      } catch (e) {
        state.signinError = e.message;
      }
    }) }, "Sign in"),
    error);
}

async function loadTemplates() {
  state.templates = await call("GET", "/templates");
}

function templatesSection() {
  const filter = el("input", { placeholder: "filter", testid: "ml-filter", value: state.filter ?? "",
                               oninput: (e) => { state.filter = e.target.value; renderList(); } });
  const list = el("tbody", {});
  const renderList = () => {
    const f = (state.filter ?? "").toLowerCase();
    list.replaceChildren(...state.templates
      .filter((t) => !f || t.name.includes(f) || t.latest.title.toLowerCase().includes(f))
      .map((t) => {
        const pick = el("select", { testid: `ml-version-${t.name}` },
          [...t.versions].reverse().map((v) => el("option", { value: v, selected: v === t.latest.version }, `v${v}`)));
        return el("tr", { testid: `ml-template-${t.name}`, title: t.latest.description ?? "" },
          el("td", {}, el("b", {}, t.name), el("div", { class: "ml-muted" }, `${t.latest.title} · ${t.latest.kind}`)),
          el("td", {}, pick),
          el("td", {}, el("button", { testid: `ml-open-${t.name}`,
                                      onclick: () => run(() => openVersion(t.name, Number(pick.value))) }, "Open")));
      }));
  };
  renderList();
  return el("section", {}, el("h3", {}, "Templates"),
    el("div", { class: "ml-row" }, filter,
      el("button", { testid: "ml-refresh", onclick: () => run(loadTemplates) }, "Refresh")),
    el("div", { class: "ml-scroll" }, el("table", { testid: "ml-templates" }, list)));
}

async function openVersion(name, version) {
  const workflow = await call("GET", `/templates/${name}/versions/${version}/workflow`);
  await app.loadGraphData(workflow, true, true, `${name}-v${version}`);  // its extra.medialab names the version
  fitView();
  state.review = null;
  state.publish = { name, title: "", kind: null, description: "" };
  toast("info", "Media Lab", `Opened ${name}@v${version}`);
}

function publishSection() {
  const from = origin();
  const p = state.publish ?? {};
  const name = el("input", { testid: "ml-publish-name", value: p.name ?? from?.template ?? "",
                             placeholder: "template-name", oninput: (e) => { state.publish = { ...p, name: e.target.value }; } });
  const title = el("input", { testid: "ml-publish-title", value: p.title ?? "", placeholder: from ? "(the version's)" : "Title",
                              oninput: (e) => { state.publish = { ...state.publish, title: e.target.value }; } });
  const kind = el("select", { testid: "ml-publish-kind",
                              onchange: (e) => { state.publish = { ...state.publish, kind: e.target.value || null }; } },
    from?.template ? el("option", { value: "", selected: !p.kind }, "(the version's)") : null,
    KINDS.map((k) => el("option", { value: k, selected: k === (p.kind ?? (from?.template ? null : "image")) }, k)));
  const description = el("textarea", { testid: "ml-publish-description", rows: 2,
                                        placeholder: from?.template ? "(the version's)" : "What it does" },
    p.description ?? "");
  description.addEventListener("input", (e) => { state.publish = { ...state.publish, description: e.target.value }; });
  return el("section", {},
    el("h3", {}, "Publish as new version"),
    el("div", { class: "ml-muted", testid: "ml-origin" },
      from?.template ? `Opened from ${from.template}@v${from.version}` : "Not opened from a template version"),
    el("label", {}, "Template name", name),
    el("label", {}, "Title", title),
    el("label", {}, "Kind", kind),
    el("label", {}, "Description", description),
    el("button", { testid: "ml-review", onclick: () => run(review) }, "Review"),
    reviewSection());
}

function publishBody() {
  const p = state.publish ?? {};
  const body = { graph: currentWorkflow() };
  if (p.kind) body.kind = p.kind;
  if (p.title) body.title = p.title;
  if (p.description) body.description = p.description;
  return { name: (p.name ?? origin()?.template ?? "").trim(), body };
}

async function promptOf() {
  // the graph as it would run (API format): what a review checked, whatever the view or layout
  return JSON.stringify((await app.graphToPrompt()).output);
}

async function review() {
  const { name, body } = publishBody();
  state.publish = { ...(state.publish ?? {}), name };
  state.review = { name, body, prompt: null, preview: null, error: null, published: null };
  render();  // "Checking…" at once, not the last review's answer
  state.review.prompt = await promptOf();
  showNodeErrors([]);
  try {
    state.review.preview = await call("POST", `/templates/${encodeURIComponent(name)}/preview`, body);
  } catch (e) {
    state.review.error = e;
    showNodeErrors(e.data?.nodes);
  }
}

async function publish() {
  const r = state.review;
  if ((await promptOf()) !== r.prompt) {
    r.preview = null;
    r.error = new Error("The graph changed after the review: review it again before publishing.");
    return;
  }
  r.publishing = true;
  render();  // the button off while it is sent: one click, one version
  try {
    const made = await call("POST", `/templates/${encodeURIComponent(r.name)}/versions`, r.body);
    r.published = made;
    setOrigin(made.name, made.version);
    toast("success", "Media Lab", `Published ${made.name}@v${made.version}`);
    await loadTemplates();
  } catch (e) {
    r.error = e;
    r.preview = null;
    showNodeErrors(e.data?.nodes);
  }
}

function shortValue(v) {
  const text = v === undefined || v === null ? "(none)" : typeof v === "string" && v ? v : JSON.stringify(v);
  return text.length > 60 ? text.slice(0, 57) + "…" : text;
}

function diffList(label, d) {
  if (!d) return null;
  const parts = [["added", "+"], ["removed", "−"], ["changed", "~"]].filter(([k]) => d[k]?.length)
    .map(([k, sign]) => el("div", { testid: `ml-diff-${label}-${k}` }, `${sign} ${k}: ${d[k].join(", ")}`));
  const details = Object.entries(d.details ?? {}).map(([what, fields]) => el("div", {
    class: "ml-muted", testid: `ml-diff-detail-${label}-${what}` }, `${what}: ` + Object.entries(fields)
    .map(([field, c]) => `${field} ${shortValue(c.from)} → ${shortValue(c.to)}`).join("; ")));
  return el("div", {}, el("b", {}, label), parts.length ? [...parts, ...details] : el("div", { class: "ml-muted" }, "no change"));
}

function reviewSection() {
  const r = state.review;
  if (!r) return null;
  if (r.published) {
    return el("div", { class: "ml-ok", testid: "ml-published" },
      `Published ${r.published.name}@v${r.published.version} (${r.published.content_hash.slice(0, 12)})`);
  }
  if (r.error) {
    const nodes = r.error.data?.nodes ?? [];
    return el("div", { testid: "ml-review-error" },
      el("div", { class: "ml-error" }, r.error.message),
      nodes.length ? el("div", {}, el("b", {}, "On the canvas:"), nodes.map((n) => el("div", { class: "ml-row" },
        el("button", { testid: `ml-show-node-${n.node}`, onclick: () => focusNode(n.node) }, `#${n.node}`),
        el("span", { class: "ml-error" }, n.message)))) : null);
  }
  const p = r.preview;
  if (!p) return el("div", { testid: "ml-checking" }, "Checking…");
  const params = p.manifest.parameters ?? [];
  return el("div", { testid: "ml-preview" },
    el("div", {}, `Will publish ${p.name}@v${p.version}`, p.base_version ? ` (diff against v${p.base_version})` : " (a new template)"),
    el("table", { testid: "ml-manifest" },
      el("tr", {}, el("th", {}, "parameter"), el("th", {}, "type"), el("th", {}, "default"), el("th", {}, "bound to")),
      params.map((q) => el("tr", { testid: `ml-param-${q.name}` }, el("td", {}, q.name), el("td", {}, q.type),
        el("td", {}, q.default === undefined || q.default === null ? "(required)" : JSON.stringify(q.default)),
        el("td", {}, `${q.bind.node}.${q.bind.input}`)))),
    el("div", { class: "ml-muted" }, "Outputs: " + (p.manifest.outputs ?? []).map((o) => `${o.name} (${o.node})`).join(", ")),
    p.base_version ? el("div", { testid: "ml-diff" },
      Object.keys(p.fields ?? {}).length ? el("div", {}, el("b", {}, "manifest"), Object.entries(p.fields).map(([k, c]) =>
        el("div", { class: "ml-muted", testid: `ml-diff-field-${k}` }, `${k}: ${shortValue(c.from)} → ${shortValue(c.to)}`))) : null,
      diffList("parameters", p.parameters), diffList("nodes", p.nodes)) : null,
    el("button", { testid: "ml-confirm", disabled: r.publishing, onclick: () => run(publish) },
      r.publishing ? "Publishing…" : `Publish ${p.name}@v${p.version}`));
}

async function run(step) {
  try {
    await step();
  } catch (e) {
    if (e.status === 401 && state.session?.signed_in) state.session = await call("GET", "/session");
    toast("error", "Media Lab", e.message);
  }
  render();
}

async function mount(root) {
  state.root = root;
  if (!state.session) {
    state.session = await call("GET", "/session");
    if (state.session.signed_in) await loadTemplates().catch((e) => toast("error", "Media Lab", e.message));
  }
  render();
}

app.registerExtension({
  name: "medialab.editor",
  async setup() {
    app.extensionManager.registerSidebarTab({
      id: "medialab",
      icon: "pi pi-cloud-upload",
      title: "Media Lab",
      tooltip: "Media Lab: open and publish template versions",
      type: "custom",
      render: (root) => { mount(root).catch((e) => toast("error", "Media Lab", e.message)); },
    });
  },
  getNodeMenuItems(node) {
    return parameterItems(node);
  },
  nodeCreated(node) {
    // a parameter node's title follows its name ("param <name>"), unless the artist gave it one of their own
    if (!String(node.comfyClass ?? node.type).startsWith("MediaLabParam")) return;
    const named = node.widgets?.find((w) => w.name === "name");
    if (!named) return;
    const previous = named.callback;
    named.callback = function (value, ...rest) {
      if (node.title === node.constructor.title || String(node.title).startsWith("param ")) {
        node.title = `param ${paramName(value)}`;
      }
      return previous?.call(this, value, ...rest);
    };
  },
});
