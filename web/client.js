/**
 * A small client for the agent gateway (wire protocol `agentgw.v1`, see docs/protocol.md).
 *
 * No dependencies and no DOM: it needs `WebSocket`, `fetch` and `EventTarget`, so it runs in
 * any browser and in Node 22+. Three exports do the work:
 *
 * - `GatewayClient`: one websocket shared by every run; `hello`, commands with promises,
 *   automatic reconnect with backoff that resubscribes every followed run with `after` (the
 *   last seq seen) and its `epoch`, so no event is lost or applied twice.
 * - `RunState`: a run's events folded into messages the way the server persists them (one
 *   item per content block `otid`, tool calls keyed by `tool_call_id`).
 * - `RestAPI`: the few REST calls a chat client needs (agents, tools, messages, runs).
 *
 * See docs/web.md for the API and the reconnect rules.
 */

export const PROTOCOL = "agentgw.v1";
export const TERMINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);

/** Close codes after which the client reconnects (and resubscribes with `after`). */
export const RECONNECT_CODES = new Set([1001, 1006, 1011, 4408, 4429]);
/** Close codes after which it does not: the same frames would be refused again. */
export const FATAL_CODES = new Set([1000, 1003, 1008, 1009, 4400, 4401]);

const CLOSE_REASONS = {
  1000: "the server closed the connection",
  1001: "the server is shutting down",
  1003: "the server refused a binary frame",
  1006: "the connection was lost",
  1008: "the connection was refused by policy",
  1009: "a frame was too large for the server",
  1011: "the server hit an internal error",
  4400: "protocol violation",
  4401: "authentication failed",
  4408: "the connection was too slow to keep up",
  4429: "too many connections",
};

/** Fields that concatenate across deltas of one content block (merged deltas, `seq_from`). */
const DELTA_FIELDS = { assistant_message: "content", reasoning_message: "reasoning" };

export function shouldReconnect(code) {
  if (RECONNECT_CODES.has(code)) return true;
  if (FATAL_CODES.has(code)) return false;
  return true; // unknown codes (1005, 1012, 1013, ...): treat as transient
}

export function describeClose(code, reason) {
  const base = CLOSE_REASONS[code] || `connection closed (code ${code})`;
  return reason && !base.includes(reason) ? `${base}: ${reason}` : base;
}

export function newId() {
  if (globalThis.crypto?.randomUUID) {
    try {
      return globalThis.crypto.randomUUID();
    } catch {
      /* not a secure context */
    }
  }
  const bytes = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** An error reply, a refused REST call or a lost connection, always with words in `message`. */
export class GatewayError extends Error {
  constructor(code, message, { retryable = false, details = null, status = null } = {}) {
    super(message || code);
    this.name = "GatewayError";
    this.code = code;
    this.retryable = retryable;
    this.details = details;
    this.status = status;
  }
}

// ---------------------------------------------------------------------------------------------
// RunState: the fold of one run's events
// ---------------------------------------------------------------------------------------------

function textOf(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => (typeof p === "string" ? p : p?.text || "")).join("");
  return content == null ? "" : String(content);
}

/**
 * One run: its status, usage, and `items`, in the order they first appeared:
 *
 * - `{kind: "user", key, otid, text}`
 * - `{kind: "reasoning", key, otid, text, signature, redacted}`
 * - `{kind: "text", key, otid, text}`
 * - `{kind: "tool", key, toolCallId, otid, name, arguments, approval, result}` where
 *   `approval` is null or `{state: "pending" | "approved" | "denied", reason}` and `result`
 *   null or `{status: "success" | "error", toolReturn, stdout, stderr}`
 * - `{kind: "error", key, errorType, message}`
 *
 * Every item has a `v` (bumped when it changes) so a view can redraw only what changed; the
 * run's `generation` is bumped when the items are rebuilt from scratch (a reset).
 */
export class RunState {
  constructor(id, { agentId = null } = {}) {
    this.id = id;
    this.agentId = agentId;
    this.epoch = null;
    this.lastSeq = 0;
    this.generation = 0;
    this.status = null;
    this.stopReason = null;
    this.usage = null;
    this.cancelling = null; // null, "immediate" or "after_step" once a cancel was acked
    this.live = false; // true when fed by websocket events, false when loaded from REST only
    this.reset();
  }

  reset() {
    this.items = [];
    this.byKey = new Map();
    this.lastSeq = 0;
    this._deltas = []; // [{from, to, len}] of recent delta frames, to trim partly seen merges
    this.generation += 1;
  }

  get terminal() {
    return TERMINAL_STATUSES.has(this.status);
  }

  get text() {
    return this.items.filter((i) => i.kind === "text").map((i) => i.text).join("");
  }

  get pendingApprovals() {
    return this.items.filter((i) => i.kind === "tool" && i.approval?.state === "pending");
  }

  /**
   * Apply one `event` frame (`{run_id, seq, event, seq_from?}`). Returns false when every seq
   * in it was already applied (a replay after a resume), true otherwise. A merged delta
   * (`seq_from..seq`) that overlaps what was seen keeps only its unseen tail.
   */
  applyFrame(frame) {
    const seq = frame.seq;
    if (typeof seq !== "number" || seq <= this.lastSeq) return false;
    let event = frame.event;
    const from = typeof frame.seq_from === "number" ? frame.seq_from : seq;
    const field = DELTA_FIELDS[event.message_type];
    if (from <= this.lastSeq && field) {
      let seen = 0;
      for (const d of this._deltas) if (d.from >= from && d.to <= this.lastSeq) seen += d.len;
      event = { ...event, [field]: String(event[field] || "").slice(seen) };
    }
    const firstNew = Math.max(from, this.lastSeq + 1);
    this.lastSeq = seq;
    if (field) {
      this._deltas.push({ from: firstNew, to: seq, len: String(event[field] || "").length });
      if (this._deltas.length > 512) this._deltas.splice(0, this._deltas.length - 256);
    }
    this.live = true;
    this.applyEvent(event);
    return true;
  }

  _item(key, make) {
    let item = this.byKey.get(key);
    if (!item) {
      item = { key, v: 0, ...make() };
      this.byKey.set(key, item);
      this.items.push(item);
    }
    item.v += 1;
    return item;
  }

  _tool(call, ev) {
    const id = call.tool_call_id;
    const item = this._item(`tool:${id}`, () => ({
      kind: "tool",
      toolCallId: id,
      otid: ev.otid || null,
      stepId: ev.step_id || null,
      name: call.name || null,
      arguments: "",
      approval: null,
      result: null,
    }));
    if (call.name && !item.name) item.name = call.name;
    return item;
  }

  /** Fold one run event (a delta, or a complete block as with `stream_tokens: false` or REST). */
  applyEvent(ev) {
    switch (ev.message_type) {
      case "run_status":
        this.status = ev.status;
        if (ev.stop_reason) this.stopReason = ev.stop_reason;
        if (TERMINAL_STATUSES.has(ev.status)) this._settle();
        break;
      case "user_message": {
        const item = this._item(`user:${ev.otid || ev.id}`, () => ({ kind: "user", otid: ev.otid, text: "" }));
        item.text = textOf(ev.content); // user messages always arrive whole
        break;
      }
      case "reasoning_message": {
        const item = this._item(`block:${ev.otid || ev.id}`, () => ({
          kind: "reasoning",
          otid: ev.otid,
          stepId: ev.step_id || null,
          text: "",
          signature: null,
          redacted: false,
        }));
        item.text += ev.reasoning || "";
        if (ev.signature) item.signature = ev.signature;
        break;
      }
      case "hidden_reasoning_message": {
        const item = this._item(`block:${ev.otid || ev.id}`, () => ({
          kind: "reasoning",
          otid: ev.otid,
          stepId: ev.step_id || null,
          text: "",
          signature: null,
          redacted: true,
        }));
        item.redacted = true;
        break;
      }
      case "assistant_message": {
        const item = this._item(`block:${ev.otid || ev.id}`, () => ({
          kind: "text",
          otid: ev.otid,
          stepId: ev.step_id || null,
          text: "",
        }));
        item.text += textOf(ev.content);
        break;
      }
      case "tool_call_message": {
        // REST (Letta) lists a step's calls in `tool_calls`; the stream sends one `tool_call`.
        const calls = Array.isArray(ev.tool_calls) && ev.tool_calls.length ? ev.tool_calls : [ev.tool_call];
        for (const call of calls) {
          if (!call?.tool_call_id) continue;
          const item = this._tool(call, ev);
          item.arguments += call.arguments || "";
        }
        break;
      }
      case "approval_request_message":
        for (const call of ev.tool_calls || []) {
          const item = this._tool(call, ev);
          item.arguments = call.arguments ?? item.arguments; // complete arguments win
          if (!item.approval || item.approval.state === "pending") item.approval = { state: "pending", reason: null };
        }
        break;
      case "approval_response_message":
        for (const a of ev.approvals || []) {
          const item = this._tool({ tool_call_id: a.tool_call_id }, ev);
          item.approval = { state: a.approve ? "approved" : "denied", reason: a.reason || null };
        }
        break;
      case "tool_return_message": {
        const returns = Array.isArray(ev.tool_returns) ? ev.tool_returns : [];
        for (const r of returns) {
          const item = this._tool({ tool_call_id: r.tool_call_id }, ev);
          item.result = {
            status: r.status,
            toolReturn: r.tool_return ?? "",
            stdout: r.stdout || null,
            stderr: r.stderr || null,
          };
        }
        break;
      }
      case "error_message": {
        const item = this._item(`error:${ev.otid || ev.error_type || this.items.length}`, () => ({ kind: "error" }));
        item.errorType = ev.error_type;
        item.message = ev.message;
        item.retryable = !!ev.retryable;
        break;
      }
      case "stop_reason":
        this.stopReason = ev.stop_reason;
        break;
      case "usage_statistics":
        this.usage = {
          promptTokens: ev.prompt_tokens,
          completionTokens: ev.completion_tokens,
          totalTokens: ev.total_tokens,
          stepCount: ev.step_count,
          cachedInputTokens: ev.cached_input_tokens ?? null,
          cacheWriteTokens: ev.cache_write_tokens ?? null,
        };
        break;
      default:
        break; // unknown message types are ignored (forward compatibility)
    }
  }

  _settle() {
    // A run that ended leaves nothing pending: an approval never decided, a call never run.
    for (const item of this.items) {
      if (item.kind !== "tool") continue;
      if (item.approval?.state === "pending") {
        item.approval = { state: "denied", reason: this.status === "cancelled" ? "cancelled" : null };
        item.v += 1;
      }
    }
  }

  /**
   * Rebuild from persisted messages (REST `GET /v1/runs/{id}/messages` or the agent's messages
   * of this run) and, if given, the REST run object (status, stop reason, usage).
   */
  loadMessages(messages, info = null) {
    this.reset();
    for (const m of messages) this.applyEvent(m);
    if (info) this.applyInfo(info);
    // A log lost while awaiting approval: the calls of the last step with no return are pending.
    if (this.status === "awaiting_approval") {
      const tools = this.items.filter((i) => i.kind === "tool");
      const lastStep = tools.length ? tools[tools.length - 1].stepId : null;
      for (const t of tools) {
        if (t.stepId === lastStep && !t.result && !t.approval) {
          t.approval = { state: "pending", reason: null };
          t.v += 1;
        }
      }
    }
  }

  applyInfo(info) {
    if (info.status) this.status = info.status;
    if (info.stop_reason) this.stopReason = info.stop_reason;
    if (info.epoch && !this.epoch) this.epoch = info.epoch;
    if (info.usage && !this.usage) {
      this.usage = {
        promptTokens: info.usage.prompt_tokens,
        completionTokens: info.usage.completion_tokens,
        totalTokens: info.usage.total_tokens,
        stepCount: info.usage.step_count,
      };
    }
    if (TERMINAL_STATUSES.has(this.status)) this._settle();
  }
}

/** Split an agent's REST messages (in order) into runs: `[{runId, messages}]`. */
export function groupByRun(messages) {
  const groups = [];
  for (const m of messages) {
    const runId = m.run_id || null;
    const last = groups[groups.length - 1];
    if (last && last.runId === runId) last.messages.push(m);
    else groups.push({ runId, messages: [m] });
  }
  return groups;
}

// ---------------------------------------------------------------------------------------------
// RestAPI
// ---------------------------------------------------------------------------------------------

function describeHttpError(status, body) {
  const detail = body && typeof body === "object" ? body.detail : body;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => {
        const loc = (d.loc || []).filter((p) => p !== "body").join(".");
        return loc ? `${loc}: ${d.msg}` : d.msg;
      })
      .join("; ");
  }
  if (typeof detail === "string" && detail) return detail;
  return `the server answered HTTP ${status}`;
}

export class RestAPI {
  constructor(baseUrl = globalThis.location?.origin || "", { fetch: fetchImpl } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this._fetch = fetchImpl || globalThis.fetch.bind(globalThis);
  }

  async request(method, path, body) {
    let response;
    try {
      response = await this._fetch(this.baseUrl + path, {
        method,
        headers: body === undefined ? {} : { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new GatewayError("network", `could not reach the server (${err.message || err})`, { retryable: true });
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (!response.ok) {
      throw new GatewayError(data?.code || `http_${response.status}`, describeHttpError(response.status, data), {
        status: response.status,
        details: data?.details || null,
        retryable: response.status >= 500,
      });
    }
    return data;
  }

  listAgents() { return this.request("GET", "/v1/agents/"); }
  getAgent(id) { return this.request("GET", `/v1/agents/${encodeURIComponent(id)}`); }
  createAgent(fields) { return this.request("POST", "/v1/agents/", fields); }
  updateAgent(id, fields) { return this.request("PATCH", `/v1/agents/${encodeURIComponent(id)}`, fields); }
  setToolApproval(agentId, toolName, requiresApproval) {
    return this.request(
      "PATCH",
      `/v1/agents/${encodeURIComponent(agentId)}/tools/approval/${encodeURIComponent(toolName)}`,
      { requires_approval: !!requiresApproval },
    );
  }
  listTools() { return this.request("GET", "/v1/tools/"); }
  upsertTool(sourceCode, fields = {}) { return this.request("PUT", "/v1/tools/", { source_code: sourceCode, ...fields }); }
  agentMessages(agentId, { limit = 100, before = null } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before) q.set("before", before);
    return this.request("GET", `/v1/agents/${encodeURIComponent(agentId)}/messages?${q}`);
  }
  listRuns(agentId) { return this.request("GET", `/v1/runs/?agent_id=${encodeURIComponent(agentId)}`); }
  getRun(runId) { return this.request("GET", `/v1/runs/${encodeURIComponent(runId)}`); }
  runMessages(runId) { return this.request("GET", `/v1/runs/${encodeURIComponent(runId)}/messages`); }
}

// ---------------------------------------------------------------------------------------------
// GatewayClient
// ---------------------------------------------------------------------------------------------

function wsUrlFor(baseUrl) {
  const url = new URL("/v1/ws", baseUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

/**
 * Events (all `CustomEvent`s; `client.on(name, fn)` passes `detail`):
 * - `state`   `{state, code, reason, attempt, retryInMs}`; state is `connecting`, `connected`,
 *             `reconnecting`, `offline` (given up: a fatal close code, or the browser is
 *             offline) or `closed` (by `close()`).
 * - `event`   `{runId, seq, event, run}` for every newly applied run event.
 * - `run`     `{runId, run}` whenever a run's state changed (after `event`, after a reset).
 * - `reset`   `{runId, run}` a resume came back `recovered: false`; the run was reloaded from REST.
 * - `error`   `{error}` an error frame answering no command (`id: null`), or a failed reload.
 * - `goodbye` `{code, reason}` the server's goodbye before it closes.
 */
export class GatewayClient extends EventTarget {
  constructor(options = {}) {
    super();
    const base = options.baseUrl || globalThis.location?.origin || "http://127.0.0.1:8283";
    this.baseUrl = base;
    this.url = options.url || wsUrlFor(base);
    this.token = options.token || null;
    this.clientInfo = options.client || { name: "agent-gateway-web", version: "1" };
    this.backoff = { initialMs: 500, maxMs: 15000, ...(options.backoff || {}) };
    this.commandTimeoutMs = options.commandTimeoutMs ?? 30000;
    this.pingTimeoutMs = options.pingTimeoutMs ?? 10000;
    this.api = options.api || new RestAPI(base, { fetch: options.fetch });
    this.WebSocket = options.WebSocket || globalThis.WebSocket;

    this.runs = new Map(); // run_id -> RunState
    this.followed = new Set(); // run ids to (re)subscribe while not terminal
    this.state = "idle";
    this.stateDetail = {};
    this.server = null; // the hello ack's result
    this.ws = null;
    this.attempt = 0;
    this._ids = 0;
    this._pending = new Map(); // command id -> entry
    this._queue = []; // entries waiting for a connection
    this._wanted = false;
    this._retryTimer = null;
    this._stableTimer = null;
    this._pingTimer = null;
    this._goodbye = null;
    this._onOnline = () => {
      if (this._wanted && this.state === "offline" && !this._fatal) this._reconnectNow();
    };
    globalThis.addEventListener?.("online", this._onOnline);
  }

  // -- events -----------------------------------------------------------------------------------

  on(name, fn) {
    const wrapped = (e) => fn(e.detail);
    this.addEventListener(name, wrapped);
    return () => this.removeEventListener(name, wrapped);
  }

  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.stateDetail = detail;
    this._emit("state", { state, ...detail });
  }

  // -- connection -------------------------------------------------------------------------------

  /** Open the connection (and keep it open). Resolves with the hello ack's result. */
  connect() {
    this._wanted = true;
    this._fatal = null;
    if (this.state === "connected") return Promise.resolve(this.server);
    const ready = new Promise((resolve, reject) => {
      const off = this.on("state", ({ state, reason }) => {
        if (state === "connected") { off(); resolve(this.server); }
        else if ((state === "offline" && this._fatal) || state === "closed") { off(); reject(new GatewayError("closed", reason)); }
      });
    });
    if (!this.ws && this.state !== "connecting") this._open();
    return ready;
  }

  /** Close for good (no reconnect). Pending commands fail. */
  close() {
    this._wanted = false;
    clearTimeout(this._retryTimer);
    this._stopTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
      try { ws.close(1000, "client closed"); } catch { /* already closed */ }
    }
    this._failAll(new GatewayError("closed", "the client was closed"), true);
    globalThis.removeEventListener?.("online", this._onOnline);
    this._setState("closed", {});
  }

  /** Retry at once (from `reconnecting`, or `offline` after a fatal close). */
  reconnectNow() {
    this._wanted = true;
    this._fatal = null;
    this._reconnectNow();
  }

  /**
   * Test and diagnostics hook: drop the socket abruptly, as a network failure would (the
   * client sees close code `code`, 1006 by default, and reacts to it as to a real close).
   * Frames in flight are lost, exactly as they would be.
   */
  dropConnection(code = 1006, reason = "connection dropped") {
    const ws = this.ws;
    if (!ws) return false;
    ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
    try { ws.close(); } catch { /* ignore */ }
    this._closed(ws, code, reason);
    return true;
  }

  _reconnectNow() {
    clearTimeout(this._retryTimer);
    if (!this.ws) this._open();
  }

  _open() {
    clearTimeout(this._retryTimer);
    this._goodbye = null;
    this._setState(this.attempt ? "reconnecting" : "connecting", { attempt: this.attempt, retryInMs: 0, connecting: true });
    let ws;
    try {
      ws = new this.WebSocket(this.url, [PROTOCOL]);
    } catch (err) {
      this._fatal = { code: 0, reason: `cannot open ${this.url}: ${err.message || err}` };
      this._setState("offline", { code: 0, reason: this._fatal.reason, fatal: true });
      return;
    }
    this.ws = ws;
    ws.onopen = () => this._hello(ws);
    ws.onmessage = (e) => this._frame(ws, e.data);
    ws.onerror = () => {}; // a close event always follows
    ws.onclose = (e) => this._closed(ws, e.code, e.reason);
  }

  _hello(ws) {
    const fields = { client: this.clientInfo };
    if (this.token) fields.token = this.token;
    const entry = this._entry("hello", fields, { internal: true });
    entry.promise.then(
      (result) => this._greeted(ws, result),
      () => {}, // a refused hello closes the socket (4400/4401): handled in _closed
    );
    this._send(entry);
  }

  _greeted(ws, result) {
    if (ws !== this.ws) return;
    this.server = result;
    this._setState("connected", { attempt: this.attempt });
    clearTimeout(this._stableTimer);
    this._stableTimer = setTimeout(() => { this.attempt = 0; }, 5000);
    this._startPing(result?.heartbeat_s);
    // Resume every followed run from the last seq seen, then send what waited.
    for (const runId of this.followed) {
      const run = this.runs.get(runId);
      if (!run || run.terminal) continue;
      this._subscribeCommand(run, run.lastSeq);
    }
    const queued = this._queue.splice(0);
    for (const entry of queued) this._send(entry);
  }

  _closed(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    this._stopTimers();
    if (code === 1006 && this._goodbye) {
      code = this._goodbye.code;
      reason = this._goodbye.reason;
    }
    reason = reason || this._goodbye?.reason || "";
    // Commands in flight: run.start carries an idempotency key and is sent again after the
    // reconnect; subscriptions are redone from `followed`; everything else fails now.
    this._failAll(new GatewayError("connection_lost", describeClose(code, reason), { retryable: true }), false);
    if (!this._wanted) {
      this._setState("closed", { code, reason });
      return;
    }
    if (!shouldReconnect(code)) {
      this._fatal = { code, reason: describeClose(code, reason) };
      this._failAll(new GatewayError("connection_closed", this._fatal.reason), true);
      this._setState("offline", { code, reason: this._fatal.reason, fatal: true });
      return;
    }
    if (globalThis.navigator && globalThis.navigator.onLine === false) {
      this._setState("offline", { code, reason: "the browser is offline", fatal: false });
      return; // the `online` event reconnects
    }
    const base = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** this.attempt);
    let delay = Math.round(base / 2 + (Math.random() * base) / 2);
    if (code === 4429) delay = Math.max(delay, 2000);
    if (this.attempt === 0 && code !== 4429) delay = Math.min(delay, 250);
    this.attempt += 1;
    this._setState("reconnecting", { code, reason: describeClose(code, reason), attempt: this.attempt, retryInMs: delay, retryAt: Date.now() + delay });
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  _stopTimers() {
    clearTimeout(this._stableTimer);
    clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  _startPing(heartbeatS) {
    clearInterval(this._pingTimer);
    const every = Math.max(5, Number(heartbeatS) || 20) * 1000;
    this._pingTimer = setInterval(() => {
      const ws = this.ws;
      if (!ws || this.state !== "connected") return;
      const entry = this._entry("ping", {}, { internal: true, timeoutMs: this.pingTimeoutMs });
      entry.promise.catch((err) => {
        if (err.code === "timeout" && ws === this.ws) this.dropConnection(1006, "the server stopped answering pings");
      });
      this._send(entry);
    }, every);
  }

  // -- commands ---------------------------------------------------------------------------------

  _entry(type, fields, { internal = false, resend = false, timeoutMs = this.commandTimeoutMs, onAck = null } = {}) {
    const id = `c${++this._ids}`;
    const entry = { id, type, fields, internal, resend, onAck, sent: false, timer: null };
    entry.promise = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    entry.timer = setTimeout(() => {
      this._pending.delete(id);
      const i = this._queue.indexOf(entry);
      if (i >= 0) this._queue.splice(i, 1);
      entry.reject(new GatewayError("timeout", `no answer to ${type} within ${Math.round(timeoutMs / 1000)} s`, { retryable: true }));
    }, timeoutMs);
    this._pending.set(id, entry);
    return entry;
  }

  _send(entry) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) {
      if (!this._queue.includes(entry)) this._queue.push(entry);
      return;
    }
    entry.sent = true;
    ws.send(JSON.stringify({ type: entry.type, id: entry.id, ...entry.fields }));
  }

  _failAll(error, includeQueued) {
    for (const [id, entry] of this._pending) {
      if (entry.resend && !includeQueued) {
        entry.sent = false; // sent again after the reconnect
        if (!this._queue.includes(entry)) this._queue.push(entry);
        continue;
      }
      if (!entry.sent && !includeQueued && !entry.internal) continue; // still queued: waits
      this._pending.delete(id);
      const i = this._queue.indexOf(entry);
      if (i >= 0) this._queue.splice(i, 1);
      clearTimeout(entry.timer);
      entry.reject(error);
    }
    if (includeQueued) this._queue.length = 0;
  }

  /**
   * Send a command; resolves with the ack's `result`, rejects with a `GatewayError` (the error
   * frame's code and message). Commands made while disconnected wait for the connection.
   */
  request(type, fields = {}, options = {}) {
    if (this._fatal) return Promise.reject(new GatewayError("connection_closed", this._fatal.reason));
    const entry = this._entry(type, fields, options);
    this._send(entry);
    return entry.promise;
  }

  _frame(ws, data) {
    if (ws !== this.ws) return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    switch (frame.type) {
      case "event":
        this._event(frame);
        break;
      case "ack":
      case "error": {
        const entry = frame.id != null ? this._pending.get(frame.id) : null;
        if (!entry) {
          if (frame.type === "error") {
            const e = frame.error || {};
            this._emit("error", { error: new GatewayError(e.code, e.message, { retryable: e.retryable, details: e.details }) });
          }
          return;
        }
        this._pending.delete(frame.id);
        clearTimeout(entry.timer);
        if (frame.type === "ack") {
          try {
            entry.onAck?.(frame.result || {});
          } finally {
            entry.resolve(frame.result || {});
          }
        } else {
          const e = frame.error || {};
          entry.reject(new GatewayError(e.code, e.message, { retryable: e.retryable, details: e.details }));
        }
        break;
      }
      case "goodbye":
        this._goodbye = { code: frame.code, reason: frame.reason };
        this._emit("goodbye", this._goodbye);
        break;
      default:
        break;
    }
  }

  _event(frame) {
    const run = this._run(frame.run_id);
    if (run._buffer) {
      run._buffer.push(frame); // a REST reload is under way
      return;
    }
    if (!run.applyFrame(frame)) return;
    this._emit("event", { runId: run.id, seq: frame.seq, event: frame.event, run });
    this._emit("run", { runId: run.id, run });
    if (run.terminal && frame.event.message_type === "run_status") this._finished(run);
  }

  _finished(run) {
    if (!this.followed.delete(run.id)) return;
    // Free the subscription slot; the log is complete.
    if (this.state === "connected") this.request("run.unsubscribe", { run_id: run.id }).catch(() => {});
  }

  _run(runId, agentId = null) {
    let run = this.runs.get(runId);
    if (!run) {
      run = new RunState(runId, { agentId });
      this.runs.set(runId, run);
    } else if (agentId && !run.agentId) {
      run.agentId = agentId;
    }
    return run;
  }

  // -- runs -------------------------------------------------------------------------------------

  /** The `RunState` of a run this client follows (or followed), or undefined. */
  getRun(runId) {
    return this.runs.get(runId);
  }

  /**
   * Start a run. `input` is a string or a list of `{role: "user", content}` messages. Always
   * sends an `idempotency_key` (yours or a fresh one), so a start lost with the connection is
   * safely sent again after the reconnect. Resolves with the run's `RunState` (the sender is
   * subscribed by the server; events follow).
   */
  async startRun(agentId, input, { streamTokens = true, maxSteps, ifBusy, idempotencyKey, otid } = {}) {
    const messages = typeof input === "string" ? [{ role: "user", content: input, otid: otid || `otid-${newId()}` }] : input;
    const fields = { agent_id: agentId, messages, stream_tokens: streamTokens, idempotency_key: idempotencyKey || newId() };
    if (maxSteps != null) fields.max_steps = maxSteps;
    if (ifBusy) fields.if_busy = ifBusy;
    let run = null;
    await this.request("run.start", fields, {
      resend: true,
      onAck: (result) => {
        run = this._run(result.run_id, agentId);
        run.epoch = result.epoch || run.epoch;
        if (!run.status) run.status = result.status;
        if (!run.terminal) this.followed.add(run.id);
      },
    });
    this._emit("run", { runId: run.id, run });
    return run;
  }

  /**
   * Follow a run: replay every event with `seq > after`, then live. `after` defaults to the last
   * seq this client applied for the run (0 for a run it never saw); `after: 0` on a run already
   * folded rebuilds it from the replay. Resolves with `{run, ack}`.
   */
  async subscribe(runId, { after, agentId = null } = {}) {
    const run = this._run(runId, agentId);
    if (after === undefined) after = run.lastSeq;
    if (after === 0 && run.lastSeq > 0) run.reset();
    this.followed.add(runId);
    const ack = await this._subscribeCommand(run, after);
    return { run, ack };
  }

  _subscribeCommand(run, after) {
    const fields = { run_id: run.id, after };
    if (run.epoch && after > 0) fields.epoch = run.epoch;
    const promise = this.request("run.subscribe", fields, {
      onAck: (ack) => this._subscribed(run, ack, after),
    });
    promise.catch((err) => {
      if (err.code === "not_found") this.followed.delete(run.id);
      if (err.code !== "connection_lost") this._emit("error", { error: err, runId: run.id });
    });
    return promise;
  }

  _subscribed(run, ack, after) {
    const epochChanged = run.epoch && ack.epoch && run.epoch !== ack.epoch;
    run.epoch = ack.epoch || run.epoch;
    if (!run.status || !run.live) run.status = ack.status;
    if (ack.recovered === false || (epochChanged && after > 0)) {
      this._reload(run, ack);
    } else if (TERMINAL_STATUSES.has(ack.status) && ack.last_seq <= run.lastSeq) {
      this._finished(run);
    }
  }

  /** `recovered: false`: rebuild the run from its persisted messages, then continue live. */
  async _reload(run, ack) {
    run._buffer = [];
    try {
      const [messages, info] = await Promise.all([this.api.runMessages(run.id), this.api.getRun(run.id)]);
      run.loadMessages(messages, info);
      run.epoch = ack.epoch || info.epoch || run.epoch;
      run.lastSeq = ack.last_seq || 0;
    } catch (err) {
      this._emit("error", { error: err, runId: run.id });
    } finally {
      const buffered = run._buffer || [];
      run._buffer = null;
      run.live = true;
      for (const frame of buffered) this._event(frame);
      this._emit("reset", { runId: run.id, run });
      this._emit("run", { runId: run.id, run });
      if (run.terminal) this._finished(run);
    }
  }

  unsubscribe(runId) {
    this.followed.delete(runId);
    return this.request("run.unsubscribe", { run_id: runId });
  }

  /** `mode`: "immediate" (default) or "after_step". Resolves with `{run_id, status}`. */
  async cancel(runId, mode = "immediate") {
    const result = await this.request("run.cancel", { run_id: runId, mode });
    const run = this.runs.get(runId);
    if (run && result.status === "cancelling") {
      run.cancelling = mode;
      this._emit("run", { runId, run });
    }
    return result;
  }

  /** `decisions`: `[{tool_call_id, approve, reason?}]`. Resolves with `{run_id, pending}`. */
  respond(runId, decisions) {
    return this.request("approval.respond", {
      run_id: runId,
      decisions: decisions.map((d) => (d.reason ? d : { tool_call_id: d.tool_call_id, approve: !!d.approve })),
    });
  }

  approve(runId, toolCallId, reason) {
    return this.respond(runId, [{ tool_call_id: toolCallId, approve: true, reason }]);
  }

  deny(runId, toolCallId, reason) {
    return this.respond(runId, [{ tool_call_id: toolCallId, approve: false, reason }]);
  }

  ping() {
    return this.request("ping", {});
  }
}
