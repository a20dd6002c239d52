// The agent dialog: create an agent, or edit one (name, model, system prompt, tools and which
// of them need approval), and add a tool from Python source.
import { h, icon } from "./view.js";

export const DEFAULT_MODEL = "anthropic/claude-sonnet-4-6";

export class AgentDialog {
  constructor(dialog, { api, toast, saved }) {
    this.dialog = dialog;
    this.api = api;
    this.toast = toast;
    this.saved = saved;
    this.agent = null;
    this.tools = [];
    this.form = dialog.querySelector("form");
    this.toolList = dialog.querySelector(".tool-list");
    this.errorEl = dialog.querySelector(".form-error");
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.save();
    });
    for (const b of dialog.querySelectorAll("[data-action=cancel]")) b.addEventListener("click", () => dialog.close());
    dialog.querySelector("[data-action=add-tool]").addEventListener("click", () => this.addTool());
    dialog.addEventListener("click", (e) => {
      if (e.target === dialog) dialog.close(); // a click on the backdrop
    });
  }

  async open(agent) {
    this.agent = agent;
    const f = this.form.elements;
    this.dialog.querySelector(".dialog-title").textContent = agent ? `Settings of ${agent.name}` : "New agent";
    this.dialog.querySelector("[data-action=save]").textContent = agent ? "Save" : "Create agent";
    f.name.value = agent?.name || "";
    f.model.value = agent?.model || DEFAULT_MODEL;
    f.system.value = agent?.system || "";
    f.source.value = "";
    this.dialog.querySelector(".add-tool").open = false;
    this.setError("");
    this.selected = new Map(); // tool name -> {attached, approval}
    const rules = new Set((agent?.tool_rules || []).filter((r) => r.type === "requires_approval").map((r) => r.tool_name));
    for (const t of agent?.tools || []) this.selected.set(t.name, { attached: true, approval: rules.has(t.name) });
    this.toolList.replaceChildren(h("div", { class: "muted small" }, "Loading tools…"));
    this.dialog.showModal();
    f.name.focus();
    await this.loadTools();
  }

  async loadTools() {
    try {
      this.tools = await this.api.listTools();
    } catch (err) {
      this.toolList.replaceChildren(h("div", { class: "form-error" }, `Could not list tools: ${err.message}`));
      return;
    }
    this.drawTools();
  }

  drawTools() {
    if (!this.tools.length) {
      this.toolList.replaceChildren(h("div", { class: "muted small" }, "No tools on this server yet. Add one from Python source below."));
      return;
    }
    this.toolList.replaceChildren(
      ...this.tools.map((t) => {
        const sel = this.selected.get(t.name) || { attached: false, approval: !!t.default_requires_approval };
        this.selected.set(t.name, sel);
        const attach = h("input", { type: "checkbox", class: "tool-attach", checked: sel.attached, "aria-label": `Attach ${t.name}` });
        const approval = h("input", { type: "checkbox", class: "tool-approval", role: "switch", checked: sel.approval, disabled: !sel.attached, "aria-label": `${t.name} needs approval` });
        attach.addEventListener("change", () => {
          sel.attached = attach.checked;
          approval.disabled = !attach.checked;
        });
        approval.addEventListener("change", () => {
          sel.approval = approval.checked;
        });
        const desc = (t.description || "").split("\n")[0];
        return h(
          "div",
          { class: "tool-row", dataset: { toolName: t.name } },
          h("label", { class: "tool-pick" }, attach, h("span", { class: "tool-pick-text" }, h("code", {}, t.name), desc ? h("span", { class: "muted small" }, desc) : null)),
          h("label", { class: "switch", title: "Ask before each call" }, approval, h("span", { class: "switch-track", "aria-hidden": "true" }), h("span", { class: "small" }, "Needs approval")),
        );
      }),
    );
  }

  async addTool() {
    const source = this.form.elements.source.value;
    if (!source.trim()) {
      this.setError("Paste the Python source of a function first.");
      return;
    }
    const button = this.dialog.querySelector("[data-action=add-tool]");
    button.disabled = true;
    try {
      const tool = await this.api.upsertTool(source);
      this.selected.set(tool.name, { attached: true, approval: !!tool.default_requires_approval });
      this.form.elements.source.value = "";
      this.dialog.querySelector(".add-tool").open = false;
      this.setError("");
      this.toast(`Tool ${tool.name} saved.`, "info");
      await this.loadTools();
    } catch (err) {
      this.setError(`The tool was not saved: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }

  setError(message) {
    this.errorEl.textContent = message;
    this.errorEl.hidden = !message;
  }

  async save() {
    const f = this.form.elements;
    const name = f.name.value.trim();
    if (!name) {
      this.setError("Give the agent a name.");
      f.name.focus();
      return;
    }
    const attached = this.tools.filter((t) => this.selected.get(t.name)?.attached);
    const fields = { name, model: f.model.value.trim() || DEFAULT_MODEL, system: f.system.value, tool_ids: attached.map((t) => t.id) };
    const button = this.dialog.querySelector("[data-action=save]");
    button.disabled = true;
    try {
      let agent = this.agent ? await this.api.updateAgent(this.agent.id, fields) : await this.api.createAgent(fields);
      const rules = new Set((agent.tool_rules || []).filter((r) => r.type === "requires_approval").map((r) => r.tool_name));
      for (const t of attached) {
        const want = !!this.selected.get(t.name)?.approval;
        if (want !== rules.has(t.name)) agent = await this.api.setToolApproval(agent.id, t.name, want);
      }
      this.dialog.close();
      await this.saved(agent, !this.agent);
    } catch (err) {
      this.setError(err.message);
    } finally {
      button.disabled = false;
    }
  }
}

export { icon };
