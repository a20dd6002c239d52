// Drawing one run (a RunState from client.js) into the DOM, incrementally: each item keeps its
// element and is redrawn only when its version `v` changed.
import { renderMarkdown } from "./markdown.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const ICONS = {
  tool: '<svg viewBox="0 0 24 24" width="16" height="16" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"><path d="M14.7 6.3a4 4 0 0 0-5.4 5.2L3.6 17.2a1.4 1.4 0 0 0 2 2l5.7-5.7a4 4 0 0 0 5.2-5.4l-2.5 2.5-2-2z"/></svg>',
  check: '<svg viewBox="0 0 24 24" width="14" height="14" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round"><path d="M5 12.5l4.5 4.5L19 7.5"/></svg>',
  cross: '<svg viewBox="0 0 24 24" width="14" height="14" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round"><path d="M6 6l12 12M18 6L6 18"/></svg>',
  shield: '<svg viewBox="0 0 24 24" width="16" height="16" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linejoin="round"><path d="M12 3l7 3v5.5c0 4.4-3 8-7 9.5-4-1.5-7-5.1-7-9.5V6z"/></svg>',
  spark: '<svg viewBox="0 0 24 24" width="16" height="16" fill="currentColor"><path d="M12 2.5l2.1 6.4 6.4 2.1-6.4 2.1L12 19.5l-2.1-6.4L3.5 11l6.4-2.1z"/></svg>',
};

export function icon(name) {
  const span = document.createElement("span");
  span.className = `icon icon-${name}`;
  span.setAttribute("aria-hidden", "true");
  span.innerHTML = ICONS[name] || "";
  return span;
}

export function prettyJSON(text) {
  if (!text) return "";
  try {
    const value = JSON.parse(text);
    const flat = JSON.stringify(value, null, 1).replace(/\n\s*/g, " ");
    // Short values on one line (`{ "num_sides": 16 }`), longer ones indented.
    return flat.length <= 64 ? flat : JSON.stringify(value, null, 2);
  } catch {
    return text; // still streaming: the fragments so far
  }
}

function formatNumber(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : "–";
}

const STATUS_LABELS = {
  queued: "Queued",
  running: "Running",
  awaiting_approval: "Waiting for approval",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Stopped",
};

const STOP_LABELS = {
  end_turn: "end of turn",
  max_steps: "step limit reached",
  refusal: "the model refused",
  error: "error",
  llm_api_error: "model API error",
  invalid_tool_call: "invalid tool call",
  max_tokens_exceeded: "token limit reached",
  cancelled: "cancelled",
};

/** What a tool card shows: `{state, label}`. */
export function toolState(item, run) {
  if (item.result) {
    if (item.approval?.state === "denied") return { state: "denied", label: "Denied" };
    return item.result.status === "success" ? { state: "success", label: "Done" } : { state: "error", label: "Error" };
  }
  if (item.approval?.state === "pending") return { state: "pending", label: "Needs approval" };
  if (item.approval?.state === "denied") return { state: "denied", label: "Denied" };
  if (run.terminal) return { state: "cancelled", label: "Not run" };
  if (item.approval?.state === "approved") return { state: "running", label: "Approved · running" };
  return { state: "running", label: "Running" };
}

/**
 * The view of one run. `hooks` gives the actions: `decide(run, item, approve, reason)`.
 * Local UI state (a decision being sent) lives in `this.sending` (tool_call_id -> true).
 */
export class RunView {
  constructor(run, hooks) {
    this.run = run;
    this.hooks = hooks;
    this.sending = new Set();
    this.els = new Map();
    this.generation = -1;
    this.footKey = "";
    this.el = h("article", { class: "run", dataset: { runId: run.id } });
    this.userEl = h("div", { class: "run-user" });
    this.bodyEl = h("div", { class: "assistant-body" });
    this.assistantEl = h(
      "div",
      { class: "turn assistant", hidden: true },
      h("div", { class: "avatar", "aria-hidden": "true" }, icon("spark")),
      this.bodyEl,
    );
    this.footEl = h("div", { class: "run-foot" });
    this.el.append(this.userEl, this.assistantEl, this.footEl);
  }

  setRun(run) {
    if (run !== this.run) {
      this.run = run;
      this.generation = -1;
    }
  }

  update() {
    const run = this.run;
    if (this.generation !== run.generation) {
      this.generation = run.generation;
      this.els.clear();
      this.userEl.replaceChildren();
      this.bodyEl.replaceChildren();
    }
    this.el.dataset.status = run.status || "unknown";
    const lastItem = run.items[run.items.length - 1];
    const streaming = run.live && !run.terminal && run.status !== "awaiting_approval";
    const assistantItems = run.items.reduce((n, i) => n + (i.kind === "user" ? 0 : 1), 0);
    // While the model has not produced anything yet, a "thinking" indicator. (Shown before the
    // items are drawn: drawing may focus an element, which must not be in a hidden subtree.)
    const waiting = streaming && assistantItems === 0 && run.status === "running";
    this.assistantEl.hidden = assistantItems === 0 && !waiting;
    this.bodyEl.classList.toggle("waiting", waiting);
    for (const item of run.items) {
      const isLast = item === lastItem;
      let rec = this.els.get(item.key);
      const localKey = `${item.v}|${this.sending.has(item.toolCallId) ? 1 : 0}|${run.status}|${isLast && streaming}`;
      if (!rec) {
        rec = { el: this.create(item), key: "" };
        this.els.set(item.key, rec);
        (item.kind === "user" ? this.userEl : this.bodyEl).append(rec.el);
      }
      if (rec.key !== localKey) {
        rec.key = localKey;
        this.draw(item, rec.el, isLast && streaming);
      }
    }
    this.drawFoot();
  }

  create(item) {
    switch (item.kind) {
      case "user":
        return h("div", { class: "turn user" }, h("div", { class: "bubble" }));
      case "reasoning":
        return h(
          "details",
          { class: "reasoning" },
          h("summary", {}, h("span", { class: "reasoning-label" }, "Thinking")),
          h("div", { class: "reasoning-text" }),
        );
      case "text":
        return h("div", { class: "md" });
      case "tool":
        return this.createTool(item);
      case "error":
        return h("div", { class: "run-error", role: "alert" });
      default:
        return h("div");
    }
  }

  draw(item, el, streaming) {
    switch (item.kind) {
      case "user":
        el.firstChild.textContent = item.text;
        break;
      case "reasoning": {
        const label = el.querySelector(".reasoning-label");
        if (item.redacted) label.textContent = "Reasoning (redacted)";
        else label.textContent = streaming ? "Thinking…" : "Thought process";
        el.classList.toggle("live", streaming);
        el.querySelector(".reasoning-text").textContent = item.redacted ? "The model's reasoning is encrypted and not shown." : item.text;
        break;
      }
      case "text":
        el.innerHTML = renderMarkdown(item.text);
        el.classList.toggle("streaming", streaming);
        break;
      case "tool":
        this.drawTool(item, el);
        break;
      case "error":
        el.replaceChildren(
          h("strong", {}, item.errorType ? `Error (${item.errorType})` : "Error"),
          h("span", {}, ` ${item.message || ""}`),
        );
        break;
      default:
        break;
    }
  }

  createTool(item) {
    const titleId = `approval-${++approvalIds}-${cssId(item.toolCallId)}`;
    const reason = h("input", {
      class: "approval-reason",
      type: "text",
      placeholder: "Reason (optional)",
      "aria-label": "Reason for your decision (optional)",
      maxlength: "500",
    });
    const approve = h("button", { type: "button", class: "btn primary", dataset: { action: "approve" } }, icon("check"), "Approve");
    const deny = h("button", { type: "button", class: "btn danger", dataset: { action: "deny" } }, icon("cross"), "Deny");
    const decide = (ok) => this.hooks.decide(this.run, item, ok, reason.value.trim());
    approve.addEventListener("click", () => decide(true));
    deny.addEventListener("click", () => decide(false));
    reason.addEventListener("keydown", (e) => {
      // Enter with a reason denies with it; Ctrl/Cmd+Enter approves.
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        decide(true);
      } else if (e.key === "Enter" && reason.value.trim()) {
        e.preventDefault();
        decide(false);
      }
    });
    return h(
      "div",
      { class: "tool-card", dataset: { toolCallId: item.toolCallId } },
      h(
        "div",
        { class: "tool-head" },
        icon("tool"),
        h("span", { class: "tool-name" }),
        h("span", { class: "badge" }),
      ),
      h(
        "div",
        { class: "tool-section tool-args-section" },
        h("div", { class: "tool-label" }, "Arguments"),
        h("pre", { class: "tool-args" }, h("code")),
      ),
      h(
        "div",
        { class: "approval", role: "group", "aria-labelledby": titleId, hidden: true },
        h("div", { class: "approval-title", id: titleId }, icon("shield"), h("span", { class: "approval-question" })),
        h("div", { class: "approval-row" }, reason, h("div", { class: "approval-actions" }, deny, approve)),
      ),
      h("div", { class: "approval-outcome", hidden: true }),
      h(
        "div",
        { class: "tool-section tool-result-section", hidden: true },
        h("div", { class: "tool-label" }, "Result"),
        h("pre", { class: "tool-result" }),
        h("details", { class: "tool-output", hidden: true }, h("summary", {}, "Output"), h("pre", { class: "tool-stdio" })),
      ),
    );
  }

  drawTool(item, el) {
    const run = this.run;
    const { state, label } = toolState(item, run);
    el.dataset.status = state;
    el.querySelector(".tool-name").textContent = item.name || "tool";
    const badge = el.querySelector(".badge");
    badge.textContent = label;
    badge.className = `badge ${state}`;
    el.querySelector(".tool-args code").textContent = prettyJSON(item.arguments) || (state === "running" ? "…" : "{}");

    const panel = el.querySelector(".approval");
    const pending = item.approval?.state === "pending";
    panel.hidden = !pending;
    if (pending) {
      panel.querySelector(".approval-question").replaceChildren("Allow ", h("code", {}, item.name || "this tool"), " to run with these arguments?");
      // Decisions are accepted once the run has paused for them (status awaiting_approval).
      const ready = run.status === "awaiting_approval" && !this.sending.has(item.toolCallId);
      for (const b of panel.querySelectorAll("button, input")) b.disabled = !ready;
      panel.classList.toggle("sending", this.sending.has(item.toolCallId));
      if (ready && panel.dataset.focused !== "1") {
        panel.dataset.focused = "1";
        this.hooks.focusApproval?.(panel);
      }
    }
    const outcome = el.querySelector(".approval-outcome");
    if (item.approval && item.approval.state !== "pending") {
      outcome.hidden = false;
      const ok = item.approval.state === "approved";
      outcome.className = `approval-outcome ${ok ? "approved" : "denied"}`;
      outcome.replaceChildren(
        icon(ok ? "check" : "cross"),
        h("span", {}, ok ? "Approved" : "Denied", item.approval.reason ? ` — ${item.approval.reason}` : ""),
      );
    } else {
      outcome.hidden = true;
    }

    const resultSection = el.querySelector(".tool-result-section");
    if (item.result) {
      resultSection.hidden = false;
      resultSection.classList.toggle("error", item.result.status !== "success");
      el.querySelector(".tool-result").textContent = prettyJSON(String(item.result.toolReturn ?? ""));
      const out = [...(item.result.stdout || []), ...(item.result.stderr || [])].join("\n").trim();
      const details = el.querySelector(".tool-output");
      details.hidden = !out;
      el.querySelector(".tool-stdio").textContent = out;
    } else {
      resultSection.hidden = true;
    }
  }

  drawFoot() {
    const run = this.run;
    const u = run.usage;
    const key = `${run.status}|${run.stopReason}|${run.cancelling}|${u ? u.totalTokens : ""}|${run.live}`;
    if (key === this.footKey) return;
    this.footKey = key;
    const foot = this.footEl;
    foot.dataset.status = run.status || "unknown";
    foot.replaceChildren();
    if (!run.status) return;
    const active = !run.terminal;
    let label = STATUS_LABELS[run.status] || run.status;
    if (active && run.cancelling) label = run.cancelling === "after_step" ? "Stopping after this step…" : "Stopping…";
    const chip = h("span", { class: `status-chip ${run.status}` }, h("span", { class: "dot" }), label);
    foot.append(chip);
    if (run.terminal && run.stopReason && !(run.status === "cancelled" && run.stopReason === "cancelled")) {
      foot.append(h("span", { class: "foot-item stop-reason", title: run.stopReason }, STOP_LABELS[run.stopReason] || run.stopReason));
    }
    if (u && run.terminal) {
      foot.append(
        h(
          "span",
          {
            class: "foot-item usage",
            title: `prompt ${formatNumber(u.promptTokens)} · completion ${formatNumber(u.completionTokens)}${u.cachedInputTokens ? ` · cache read ${formatNumber(u.cachedInputTokens)}` : ""}`,
          },
          `${formatNumber(u.totalTokens)} tokens (${formatNumber(u.promptTokens)} in · ${formatNumber(u.completionTokens)} out)`,
        ),
        h("span", { class: "foot-item steps" }, `${u.stepCount} step${u.stepCount === 1 ? "" : "s"}`),
      );
    }
  }
}

let approvalIds = 0;

function cssId(s) {
  return String(s).replace(/[^a-zA-Z0-9_-]/g, "_");
}
