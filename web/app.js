// The chat UI: agents in a sidebar, open conversations as tabs, all on one GatewayClient.
import { GatewayClient, RunState, groupByRun, TERMINAL_STATUSES } from "./client.js";
import { RunView, h, icon } from "./view.js";
import { AgentDialog } from "./agents.js";

const $ = (sel, root = document) => root.querySelector(sel);
const HISTORY_PAGE = 100;
const POLL_MS = 2500;

// -- setup -------------------------------------------------------------------------------------

const params = new URLSearchParams(location.search);
if (params.get("token")) localStorage.setItem("gw.token", params.get("token"));

const client = new GatewayClient({
  token: localStorage.getItem("gw.token") || null,
  client: { name: "agent-gateway-web", version: "1" },
});
window.gatewayClient = client; // for the console and the browser tests
const api = client.api;

const state = {
  agents: new Map(), // id -> agent (REST)
  convs: new Map(), // agent id -> Conversation
  open: [], // agent ids, tab order
  current: null,
};
window.gatewayApp = state;

// -- toasts ------------------------------------------------------------------------------------

export function toast(message, kind = "error") {
  const box = $("#toasts");
  const el = h(
    "div",
    { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", { class: "toast-text" }, message),
    h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss", onclick: () => el.remove() }, "×"),
  );
  box.append(el);
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
  while (box.children.length > 4) box.firstChild.remove();
}

// -- connection state --------------------------------------------------------------------------

let countdown = null;
function showConnection(detail) {
  const conn = $("#conn");
  const banner = $("#banner");
  const { state: st } = detail;
  conn.dataset.state = st;
  const label = $(".label", conn);
  clearInterval(countdown);
  const labels = { idle: "Connecting…", connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…", offline: "Offline", closed: "Disconnected" };
  label.textContent = labels[st] || st;
  conn.title = detail.reason || "";
  if (st === "connected" || st === "connecting" || st === "idle") {
    banner.hidden = true;
    banner.replaceChildren();
    return;
  }
  banner.hidden = false;
  banner.dataset.state = st;
  const text = h("span", { class: "banner-text" });
  const retry = h("button", { type: "button", class: "btn small", onclick: () => client.reconnectNow() }, "Reconnect now");
  banner.replaceChildren(text, retry);
  if (st === "reconnecting") {
    const tick = () => {
      const left = Math.max(0, Math.ceil(((detail.retryAt || 0) - Date.now()) / 1000));
      text.textContent = `${capitalise(detail.reason || "connection lost")}. ${detail.connecting || left === 0 ? "Reconnecting…" : `Reconnecting in ${left} s…`}`;
      label.textContent = detail.connecting || left === 0 ? "Reconnecting…" : `Reconnecting in ${left} s`;
    };
    tick();
    countdown = setInterval(tick, 500);
  } else if (st === "offline" && detail.code === 4401) {
    text.textContent = "Authentication failed: this server needs an access token.";
    const input = h("input", { type: "password", class: "token-input", placeholder: "Access token", "aria-label": "Access token" });
    const go = h("button", {
      type: "button",
      class: "btn small primary",
      onclick: () => {
        localStorage.setItem("gw.token", input.value);
        client.token = input.value || null;
        client.reconnectNow();
      },
    }, "Connect");
    banner.replaceChildren(text, input, go);
  } else {
    text.textContent = `Offline: ${detail.reason || "not connected"}.`;
  }
}

function capitalise(s) {
  return s ? s[0].toUpperCase() + s.slice(1) : s;
}

client.on("state", showConnection);
client.on("error", ({ error }) => toast(error.message || String(error)));
client.on("goodbye", ({ reason }) => reason && toast(`Server: ${reason}`, "info"));

// -- conversations -----------------------------------------------------------------------------

class Conversation {
  constructor(agent) {
    this.agent = agent;
    this.runs = new Map(); // run id -> RunState
    this.order = []; // run ids, oldest first
    this.views = new Map(); // run id -> RunView
    this.pendingSend = null; // text being sent (shown before the ack)
    this.hasMore = false;
    this.oldestMessageId = null;
    this.loaded = false;
    this.dirty = true;
    this.lastMessageId = null;
    this.build();
  }

  get id() {
    return this.agent.id;
  }

  build() {
    const textarea = h("textarea", { rows: "1", "aria-label": "Message", placeholder: `Message ${this.agent.name}…` });
    const send = h("button", { type: "submit", class: "btn send", "aria-label": "Send", title: "Send (Enter)" },
      h("span", { "aria-hidden": "true", class: "send-arrow" }, "↑"));
    const stop = h("button", { type: "button", class: "btn stop", hidden: true, title: "Stop now" },
      h("span", { class: "stop-square", "aria-hidden": "true" }), "Stop");
    const stopStep = h("button", { type: "button", class: "btn ghost small stop-step", hidden: true, title: "Let the current step finish, then stop" }, "Stop after this step");
    this.more = h("button", { type: "button", class: "btn ghost small load-more", hidden: true, onclick: () => this.loadEarlier() }, "Load earlier messages");
    this.thread = h("div", { class: "thread", role: "log", "aria-label": `Conversation with ${this.agent.name}`, "aria-live": "polite" });
    this.pendingEl = h("div", { class: "turn user pending", hidden: true }, h("div", { class: "bubble" }));
    this.emptyEl = h("div", { class: "thread-empty", hidden: true });
    this.scroller = h("div", { class: "scroller" }, h("div", { class: "thread-wrap" }, this.more, this.emptyEl, this.thread, this.pendingEl));
    this.approvalBar = h("div", { class: "approval-bar", hidden: true, role: "status" });
    this.head = h("div", { class: "conv-head" });
    this.form = h(
      "form",
      { class: "composer" },
      h(
        "div",
        { class: "composer-box" },
        textarea,
        h("div", { class: "composer-actions" }, stopStep, stop, send),
      ),
      h("div", { class: "composer-hint" }, "Enter to send · Shift+Enter for a new line"),
    );
    this.el = h("section", { class: "conv", role: "tabpanel", dataset: { agentId: this.id } }, this.head, this.scroller, this.approvalBar, this.form);
    Object.assign(this, { textarea, send, stop, stopStep });

    textarea.addEventListener("input", () => this.autosize());
    textarea.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    stop.addEventListener("click", () => this.cancel("immediate"));
    stopStep.addEventListener("click", () => this.cancel("after_step"));
    this.drawHead();
  }

  drawHead() {
    const a = this.agent;
    const rules = new Set((a.tool_rules || []).filter((r) => r.type === "requires_approval").map((r) => r.tool_name));
    const tools = (a.tools || []).map((t) =>
      h("span", { class: `chip${rules.has(t.name) ? " gated" : ""}`, title: rules.has(t.name) ? `${t.name} needs approval` : t.description || t.name },
        rules.has(t.name) ? icon("shield") : icon("tool"), t.name));
    this.head.replaceChildren(
      h("div", { class: "conv-title" }, h("h1", {}, a.name), h("span", { class: "model" }, a.model)),
      h("div", { class: "conv-tools" }, tools.length ? tools : h("span", { class: "muted small" }, "No tools")),
      h("button", { type: "button", class: "btn ghost small", onclick: () => agentDialog.open(this.agent) }, "Settings"),
    );
    this.textarea.placeholder = `Message ${a.name}…`;
  }

  autosize() {
    const t = this.textarea;
    t.style.height = "auto";
    t.style.height = `${Math.min(t.scrollHeight, 240)}px`;
  }

  /** The run still going (or waiting), if any. */
  activeRun() {
    for (let i = this.order.length - 1; i >= 0; i--) {
      const run = this.runs.get(this.order[i]);
      if (run && run.status && !TERMINAL_STATUSES.has(run.status)) return run;
    }
    return null;
  }

  setRun(run, { prepend = false } = {}) {
    if (!this.runs.has(run.id)) {
      if (prepend) this.order.unshift(run.id);
      else this.order.push(run.id);
    }
    this.runs.set(run.id, run);
    this.changed();
  }

  changed() {
    this.dirty = true;
    scheduleRender();
  }

  async load() {
    const agent = await api.getAgent(this.id);
    this.agent = agent;
    state.agents.set(agent.id, agent);
    this.drawHead();
    const [messages, runs] = await Promise.all([api.agentMessages(this.id, { limit: HISTORY_PAGE }), api.listRuns(this.id)]);
    this.runInfo = new Map(runs.map((r) => [r.id, r]));
    this.order = [];
    this.runs = new Map();
    this.hasMore = messages.length >= HISTORY_PAGE;
    this.oldestMessageId = messages[0]?.id || null;
    this.lastMessageId = messages[messages.length - 1]?.id || null;
    let n = 0;
    for (const group of groupByRun(messages)) {
      const id = group.runId || `history-${this.id}-${n++}`;
      const followed = group.runId && client.getRun(group.runId);
      if (followed && followed.live) {
        this.setRun(followed);
        continue;
      }
      const run = new RunState(id, { agentId: this.id });
      run.loadMessages(group.messages, this.runInfo.get(group.runId));
      this.setRun(run);
    }
    // A run going on now (started elsewhere, or before a reload): replay it from the start.
    if (agent.active_run_id) await this.follow(agent.active_run_id);
    this.loaded = true;
    this.stickToBottom = true;
    this.changed();
  }

  async follow(runId) {
    const known = client.getRun(runId);
    if (known && known.live && client.followed.has(runId)) {
      this.setRun(known);
      return known;
    }
    const { run } = await client.subscribe(runId, { after: 0, agentId: this.id });
    this.setRun(run);
    return run;
  }

  async loadEarlier() {
    if (!this.oldestMessageId) return;
    this.more.disabled = true;
    try {
      const messages = await api.agentMessages(this.id, { limit: HISTORY_PAGE, before: this.oldestMessageId });
      this.hasMore = messages.length >= HISTORY_PAGE;
      if (messages.length) this.oldestMessageId = messages[0].id;
      const groups = groupByRun(messages);
      let n = 0;
      const firstKnown = this.order[0];
      for (const group of groups.reverse()) {
        const id = group.runId || `history-${this.id}-old-${Date.now()}-${n++}`;
        if (this.runs.has(id)) {
          if (id === firstKnown && !this.runs.get(id).live) {
            // The page boundary split this run: reload it whole.
            const run = new RunState(id, { agentId: this.id });
            run.loadMessages(await api.runMessages(id), this.runInfo?.get(id));
            this.runs.set(id, run);
          }
          continue;
        }
        const run = new RunState(id, { agentId: this.id });
        run.loadMessages(group.messages, this.runInfo?.get(group.runId));
        this.setRun(run, { prepend: true });
      }
      const sc = this.scroller;
      const before = sc.scrollHeight - sc.scrollTop;
      this.render();
      sc.scrollTop = sc.scrollHeight - before;
    } catch (err) {
      toast(`Could not load earlier messages: ${err.message}`);
    } finally {
      this.more.disabled = false;
    }
  }

  async submit() {
    const text = this.textarea.value.trim();
    if (!text || this.pendingSend || this.activeRun()) return;
    this.pendingSend = text;
    this.textarea.value = "";
    this.autosize();
    this.stickToBottom = true;
    this.changed();
    try {
      const run = await client.startRun(this.id, text);
      this.pendingSend = null;
      this.setRun(run);
    } catch (err) {
      this.pendingSend = null;
      if (err.code === "agent_busy" && err.details?.active_run_id) {
        toast("The agent is busy with another run; showing it here. Send again when it ends.", "info");
        this.textarea.value = text;
        await this.follow(err.details.active_run_id).catch(() => {});
      } else {
        this.textarea.value = text;
        toast(`Could not send: ${err.message}`);
      }
      this.autosize();
      this.changed();
    }
  }

  async cancel(mode) {
    const run = this.activeRun();
    if (!run) return;
    try {
      await client.cancel(run.id, mode);
    } catch (err) {
      toast(`Could not stop the run: ${err.message}`);
    }
    this.changed();
  }

  async decide(run, item, approve, reason) {
    const view = this.views.get(run.id);
    view?.sending.add(item.toolCallId);
    this.changed();
    try {
      await client.respond(run.id, [{ tool_call_id: item.toolCallId, approve, reason: reason || undefined }]);
    } catch (err) {
      // Someone else decided first: the approval_response event closes the card anyway.
      if (err.code !== "approval_not_pending" || item.approval?.state === "pending") toast(`Could not send the decision: ${err.message}`);
    } finally {
      view?.sending.delete(item.toolCallId);
      this.changed();
    }
  }

  render() {
    if (!this.dirty) return;
    this.dirty = false;
    const sc = this.scroller;
    const visible = state.current === this.id;
    const nearBottom = this.stickToBottom || sc.scrollHeight - sc.scrollTop - sc.clientHeight < 120;
    this.stickToBottom = false;
    // Runs in order; views are kept and redrawn incrementally.
    for (const [id, view] of this.views) {
      if (!this.runs.has(id)) {
        view.el.remove();
        this.views.delete(id);
      }
    }
    let prev = null;
    for (const id of this.order) {
      const run = this.runs.get(id);
      let view = this.views.get(id);
      if (!view) {
        view = new RunView(run, {
          decide: (r, item, ok, reason) => this.decide(r, item, ok, reason),
          focusApproval: (panel) => {
            const a = document.activeElement;
            const typing = a && (a.tagName === "TEXTAREA" || a.tagName === "INPUT") && a.value;
            const deciding = a && a.closest?.(".approval"); // already on another pending call
            if (state.current === this.id && !typing && !deciding) panel.querySelector('[data-action="approve"]').focus({ preventScroll: true });
          },
        });
        this.views.set(id, view);
      }
      const want = prev ? prev.el.nextSibling : this.thread.firstChild;
      if (want !== view.el) (prev ? prev.el.after(view.el) : this.thread.prepend(view.el));
      view.setRun(run);
      view.update(); // attached first: drawing may move the focus into it
      prev = view;
    }
    this.more.hidden = !this.hasMore;
    this.pendingEl.hidden = !this.pendingSend;
    if (this.pendingSend) this.pendingEl.firstChild.textContent = this.pendingSend;
    this.emptyEl.hidden = !(this.loaded && this.order.length === 0 && !this.pendingSend);
    this.emptyEl.replaceChildren(
      h("div", { class: "empty-icon" }, icon("spark")),
      h("div", { class: "empty-title" }, `Start a conversation with ${this.agent.name}`),
      h("div", { class: "muted" }, (this.agent.tools || []).length ? `Tools: ${this.agent.tools.map((t) => t.name).join(", ")}` : "This agent has no tools."),
    );
    this.drawComposer();
    this.drawApprovalBar();
    if (nearBottom && visible) sc.scrollTop = sc.scrollHeight;
    renderTabs();
  }

  drawComposer() {
    const run = this.activeRun();
    const busy = !!run;
    this.el.dataset.busy = busy ? "1" : "";
    this.send.hidden = busy;
    this.send.disabled = !!this.pendingSend;
    this.stop.hidden = !busy;
    this.stopStep.hidden = !busy || run.status === "awaiting_approval" || run.status === "queued";
    this.stop.disabled = this.stopStep.disabled = !!run?.cancelling;
    this.form.classList.toggle("busy", busy);
  }

  drawApprovalBar() {
    const run = this.activeRun();
    const pending = run ? run.pendingApprovals : [];
    this.approvalBar.hidden = pending.length === 0;
    if (!pending.length) return;
    const names = [...new Set(pending.map((p) => p.name))].join(", ");
    const ready = run.status === "awaiting_approval";
    const all = (ok) => {
      const view = this.views.get(run.id);
      for (const p of pending) view?.sending.add(p.toolCallId);
      this.changed();
      client
        .respond(run.id, pending.map((p) => ({ tool_call_id: p.toolCallId, approve: ok })))
        .catch((err) => toast(`Could not send the decision: ${err.message}`))
        .finally(() => {
          for (const p of pending) view?.sending.delete(p.toolCallId);
          this.changed();
        });
    };
    const review = h("button", {
      type: "button",
      class: "btn ghost small",
      onclick: () => {
        const card = this.thread.querySelector(`.tool-card[data-status="pending"]`);
        card?.scrollIntoView({ block: "center", behavior: "smooth" });
        card?.querySelector('[data-action="approve"]')?.focus({ preventScroll: true });
      },
    }, "Review");
    const children = [icon("shield"), h("span", { class: "approval-bar-text" }, pending.length === 1 ? `${names} is waiting for your approval` : `${pending.length} tool calls (${names}) are waiting for your approval`), review];
    if (pending.length > 1) {
      children.push(
        h("button", { type: "button", class: "btn small danger", disabled: !ready, onclick: () => all(false) }, "Deny all"),
        h("button", { type: "button", class: "btn small primary", disabled: !ready, onclick: () => all(true) }, "Approve all"),
      );
    }
    this.approvalBar.replaceChildren(...children);
  }

  /** Catch runs started elsewhere (another tab, another client) while this one is open. */
  async poll() {
    if (!this.loaded || this.activeRun() || this.pendingSend) return;
    const [agent, last] = await Promise.all([api.getAgent(this.id), api.agentMessages(this.id, { limit: 1 })]);
    if (agent.updated_at !== this.agent.updated_at) {
      this.agent = agent;
      state.agents.set(agent.id, agent);
      this.drawHead();
      renderAgents();
    }
    if (agent.active_run_id && !this.runs.has(agent.active_run_id)) {
      await this.follow(agent.active_run_id);
    } else if (!agent.active_run_id && (last[0]?.id || null) !== this.lastMessageId) {
      const known = this.runs.get(last[0]?.run_id);
      if (!(known && known.live)) await this.load(); // runs that came and went meanwhile
      else this.lastMessageId = last[0]?.id || null;
    }
  }
}

// -- rendering ---------------------------------------------------------------------------------

let frame = 0;
function scheduleRender() {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    for (const conv of state.convs.values()) if (conv.id === state.current) conv.render();
  });
}

let tabsKey = "";
function renderTabs() {
  const tabs = $("#tabs");
  // Redrawn only when something shown changed (this runs on every streamed frame).
  const key = JSON.stringify([state.current, state.open.map((id) => {
    const conv = state.convs.get(id);
    const run = conv?.activeRun();
    return [id, conv?.agent?.name || state.agents.get(id)?.name, run ? run.pendingApprovals.length : -1];
  })]);
  if (key === tabsKey) return;
  tabsKey = key;
  const items = state.open.map((id) => {
    const conv = state.convs.get(id);
    const agent = conv?.agent || state.agents.get(id);
    const run = conv?.activeRun();
    const status = run ? (run.pendingApprovals.length ? "approval" : "running") : "";
    const selected = id === state.current;
    return h(
      "div",
      { class: `tab${selected ? " selected" : ""}`, dataset: { agentId: id, status } },
      h("button", { type: "button", role: "tab", class: "tab-main", "aria-selected": selected ? "true" : "false", onclick: () => openConversation(id) },
        h("span", { class: "tab-dot", "aria-hidden": "true" }), h("span", { class: "tab-name" }, agent?.name || "…")),
      h("button", { type: "button", class: "tab-close", "aria-label": `Close ${agent?.name || "conversation"}`, onclick: () => closeConversation(id) }, "×"),
    );
  });
  tabs.replaceChildren(...items);
  $("#empty").hidden = state.open.length > 0;
  renderAgentsStatus();
}

function renderAgentsStatus() {
  for (const el of document.querySelectorAll("#agent-list .agent")) {
    const conv = state.convs.get(el.dataset.agentId);
    const agent = state.agents.get(el.dataset.agentId);
    const run = conv?.activeRun();
    const busy = run ? (run.pendingApprovals.length ? "approval" : "running") : agent?.active_run_id && !conv ? "running" : "";
    el.dataset.status = busy;
    el.classList.toggle("selected", el.dataset.agentId === state.current);
  }
}

function initials(name) {
  const parts = String(name || "?").split(/[\s_-]+/).filter(Boolean);
  return (parts.length > 1 ? parts[0][0] + parts[1][0] : (parts[0] || "?").slice(0, 2)).toUpperCase();
}

function hue(s) {
  let x = 0;
  for (const c of String(s)) x = (x * 31 + c.charCodeAt(0)) % 360;
  return x;
}

let agentsKey = "";
function renderAgents() {
  const list = $("#agent-list");
  const agents = [...state.agents.values()].sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
  const key = JSON.stringify(agents.map((a) => [a.id, a.name, a.model]));
  if (key === agentsKey) {
    renderAgentsStatus();
    return;
  }
  agentsKey = key;
  if (!agents.length) {
    list.replaceChildren(h("div", { class: "muted small side-empty" }, "No agents yet."));
  } else {
    list.replaceChildren(
      ...agents.map((a) =>
        h(
          "button",
          { type: "button", class: "agent", dataset: { agentId: a.id }, onclick: () => { openConversation(a.id); closeSidebar(); } },
          h("span", { class: "agent-avatar", style: `--h:${hue(a.id)}`, "aria-hidden": "true" }, initials(a.name)),
          h("span", { class: "agent-text" }, h("span", { class: "agent-name" }, a.name), h("span", { class: "agent-model" }, a.model)),
          h("span", { class: "agent-dot", "aria-hidden": "true" }),
        ),
      ),
    );
  }
  const welcome = $("#welcome-agents");
  if (welcome) {
    welcome.replaceChildren(
      ...agents.slice(0, 6).map((a) =>
        h("button", { type: "button", class: "welcome-agent", onclick: () => openConversation(a.id) },
          h("span", { class: "agent-avatar", style: `--h:${hue(a.id)}` }, initials(a.name)),
          h("span", { class: "agent-text" }, h("span", { class: "agent-name" }, a.name), h("span", { class: "agent-model" }, a.model)))),
    );
  }
  renderAgentsStatus();
}

async function refreshAgents() {
  try {
    const agents = await api.listAgents();
    state.agents = new Map(agents.map((a) => [a.id, a]));
    renderAgents();
    renderTabs();
  } catch (err) {
    toast(`Could not list agents: ${err.message}`);
  }
}

// -- opening and closing -----------------------------------------------------------------------

export async function openConversation(agentId, { focus = true } = {}) {
  let conv = state.convs.get(agentId);
  if (!conv) {
    const agent = state.agents.get(agentId) || { id: agentId, name: "…", model: "", tools: [] };
    conv = new Conversation(agent);
    state.convs.set(agentId, conv);
    $("#views").append(conv.el);
    conv.load().catch((err) => {
      toast(err.status === 404 ? "That agent no longer exists." : `Could not load the conversation: ${err.message}`);
      if (err.status === 404) closeConversation(agentId);
    });
  }
  if (!state.open.includes(agentId)) state.open.push(agentId);
  state.current = agentId;
  for (const c of state.convs.values()) c.el.hidden = c.id !== agentId;
  saveTabs();
  if (location.hash !== `#/agent/${agentId}`) history.replaceState(null, "", `#/agent/${agentId}`);
  document.title = `${conv.agent.name} · Agent Gateway`;
  conv.dirty = true;
  conv.stickToBottom = true;
  conv.render();
  renderTabs();
  if (focus && !matchMedia("(pointer: coarse)").matches) conv.textarea.focus({ preventScroll: true });
  return conv;
}

function closeConversation(agentId) {
  const conv = state.convs.get(agentId);
  if (conv) {
    for (const id of conv.order) {
      const run = client.getRun(id);
      if (run && client.followed.has(id)) client.unsubscribe(id).catch(() => {});
    }
    conv.el.remove();
    state.convs.delete(agentId);
  }
  const i = state.open.indexOf(agentId);
  if (i >= 0) state.open.splice(i, 1);
  if (state.current === agentId) {
    state.current = null;
    const next = state.open[Math.min(i, state.open.length - 1)];
    if (next) openConversation(next);
    else {
      history.replaceState(null, "", location.pathname + location.search);
      document.title = "Agent Gateway";
    }
  }
  saveTabs();
  renderTabs();
}

function saveTabs() {
  localStorage.setItem("gw.tabs", JSON.stringify(state.open));
}

// -- sidebar on small screens ------------------------------------------------------------------

function closeSidebar() {
  document.body.classList.remove("sidebar-open");
}

// -- agent dialog ------------------------------------------------------------------------------

const agentDialog = new AgentDialog($("#agent-dialog"), {
  api,
  toast,
  saved: async (agent, created) => {
    state.agents.set(agent.id, agent);
    renderAgents();
    const conv = state.convs.get(agent.id);
    if (conv) {
      conv.agent = agent;
      conv.drawHead();
      conv.changed();
    }
    if (created) await openConversation(agent.id);
  },
});

// -- start -------------------------------------------------------------------------------------

function start() {
  $("#new-agent").addEventListener("click", () => agentDialog.open(null));
  $("#welcome-new").addEventListener("click", () => agentDialog.open(null));
  $("#menu").addEventListener("click", () => document.body.classList.toggle("sidebar-open"));
  $("#scrim").addEventListener("click", closeSidebar);
  client.on("run", ({ run }) => {
    const conv = run.agentId && state.convs.get(run.agentId);
    if (conv && conv.runs.get(run.id) === run) conv.changed();
    else if (conv && !conv.runs.has(run.id)) conv.setRun(run);
    else renderAgentsStatus();
  });
  client.on("state", ({ state: st }) => {
    if (st === "connected") for (const conv of state.convs.values()) conv.changed();
  });
  client.connect().catch(() => {});

  refreshAgents().then(() => {
    let tabs = [];
    try {
      tabs = JSON.parse(localStorage.getItem("gw.tabs") || "[]").filter((id) => state.agents.has(id));
    } catch {
      tabs = [];
    }
    const fromHash = location.hash.match(/^#\/agent\/(.+)$/)?.[1];
    const wanted = fromHash && state.agents.has(decodeURIComponent(fromHash)) ? decodeURIComponent(fromHash) : null;
    for (const id of tabs) if (id !== wanted) openConversation(id, { focus: false });
    if (wanted) openConversation(wanted);
    else if (tabs.length) openConversation(tabs[tabs.length - 1]);
    renderTabs();
  });

  window.addEventListener("hashchange", () => {
    const id = location.hash.match(/^#\/agent\/(.+)$/)?.[1];
    if (id && decodeURIComponent(id) !== state.current) openConversation(decodeURIComponent(id));
  });

  setInterval(() => {
    if (document.visibilityState !== "visible" || client.state !== "connected") return;
    const conv = state.convs.get(state.current);
    conv?.poll().catch(() => {});
  }, POLL_MS);
  setInterval(() => {
    if (document.visibilityState === "visible") refreshAgents();
  }, 20000);
}

start();
