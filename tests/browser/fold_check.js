async () => {
  // Evaluated in the page by test_client_folds_events_once_with_merged_deltas (test_ui.py).
  const { RunState, groupByRun } = await import("/client.js");
  const run = new RunState("run-1");
  const ev = (seq, event, extra = {}) => ({ type: "event", run_id: "run-1", seq, event, ...extra });
  const text = (seq, content, extra) => ev(seq, { message_type: "assistant_message", otid: "b0", id: "m1", content }, extra);
  const call = (seq, id, args, name) =>
    ev(seq, { message_type: "tool_call_message", otid: "b-" + id, id: "m1",
              tool_call: { tool_call_id: id, arguments: args, ...(name ? { name } : {}) } });
  const applied = [
    ev(1, { message_type: "user_message", otid: "u1", content: [{ type: "text", text: "hi" }] }),
    ev(2, { message_type: "run_status", status: "running" }),
    text(3, "Hel"), text(4, "lo"), text(4, "lo"), text(3, "Hel"),          // duplicates
    text(6, "lo, wor", { seq_from: 4 }),                                   // merged 4..6, overlaps 4
    text(7, "ld"),
    call(8, "a", '{"x":', "t"), call(9, "b", '{"y":', "t"), call(10, "a", " 1}"), call(11, "b", " 2}"),
    ev(12, { message_type: "approval_request_message", otid: "ap", id: "m1",
             tool_calls: [{ tool_call_id: "b", name: "t", arguments: '{"y": 2}' }] }),
    ev(13, { message_type: "run_status", status: "awaiting_approval" }),
    ev(14, { message_type: "approval_response_message", approvals: [{ tool_call_id: "b", approve: false, reason: "no" }] }),
    ev(15, { message_type: "tool_return_message", otid: "r", id: "m2", tool_returns: [
      { tool_call_id: "a", status: "success", tool_return: "1" },
      { tool_call_id: "b", status: "error", tool_return: "denied" }] }),
    ev(16, { message_type: "stop_reason", stop_reason: "end_turn" }),
    ev(17, { message_type: "usage_statistics", prompt_tokens: 5, completion_tokens: 3, total_tokens: 8, step_count: 1 }),
    ev(18, { message_type: "run_status", status: "completed", stop_reason: "end_turn" }),
  ].map((f) => run.applyFrame(f));
  const rest = new RunState("run-1");
  rest.loadMessages([
    { message_type: "user_message", otid: "u1", content: "hi", run_id: "run-1" },
    { message_type: "assistant_message", otid: "b0", content: "Hello, world", run_id: "run-1" },
    { message_type: "tool_call_message", otid: "b-a", tool_call: { tool_call_id: "a", name: "t", arguments: '{"x": 1}' },
      tool_calls: [{ tool_call_id: "a", name: "t", arguments: '{"x": 1}' }, { tool_call_id: "b", name: "t", arguments: '{"y": 2}' }] },
    { message_type: "tool_return_message", otid: "r", tool_returns: [
      { tool_call_id: "a", status: "success", tool_return: "1" }, { tool_call_id: "b", status: "error", tool_return: "denied" }] },
  ], { status: "completed", stop_reason: "end_turn", usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8, step_count: 1 } });
  const shape = (r) => r.items.map((i) => [i.kind, i.text ?? null, i.toolCallId ?? null, i.arguments ?? null,
                                          i.result?.status ?? null]);
  return {
    applied, text: run.text, status: run.status, lastSeq: run.lastSeq, usage: run.usage,
    live: shape(run), rest: shape(rest),
    approvalB: run.byKey.get("tool:b").approval,
    groups: groupByRun([{ run_id: "r1" }, { run_id: "r1" }, { run_id: "r2" }, { run_id: "r1" }]).map((g) => [g.runId, g.messages.length]),
  };
}
