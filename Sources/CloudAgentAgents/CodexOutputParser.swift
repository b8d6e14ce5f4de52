import CloudAgentProtocol

/// Codex's `codex exec --json`: one JSON object per line.
///
/// - `{"type":"thread.started","thread_id"}` — the conversation id (`codex exec resume ID`).
/// - `{"type":"item.started"|"item.updated"|"item.completed","item":{"id","type",…}}` — by item type:
///   `agent_message` {text} → `text`; `reasoning` {text} → `log`; `command_execution`
///   {command, aggregated_output, exit_code, status} → `tool` named `shell`; `file_change`
///   {changes:[{path, kind}]} → `tool` named `apply_patch`; `mcp_tool_call` {server, tool,
///   arguments} → `tool`; `web_search` {query} → `tool`; `todo_list` → `log`; `error` {message} → `error`.
/// - `{"type":"turn.completed","usage"}` — succeeded; `{"type":"turn.failed","error":{"message"}}` —
///   failed with that message; `{"type":"error","message"}` — an `error` event (a `log` for its
///   "Reconnecting… n/m" retry notices), and the outcome unless a later turn completes.
public struct CodexOutputParser: AgentOutputParser {
    public private(set) var conversationId: String?
    private var reported: AgentOutcome?
    private var lastError: String?

    public init() {}

    public var outcome: AgentOutcome? {
        reported ?? lastError.map { .failed($0) }
    }

    public mutating func parse(line: String) -> [AgentOutputItem] {
        guard let object = AgentEventData.object(line) else { return [.output] }
        let type = object["type"]?.stringValue ?? ""
        switch type {
        case "thread.started":
            if let thread = object["thread_id"]?.stringValue, !thread.isEmpty { conversationId = thread }
            return [.agent(AgentEventData.log("thread \(conversationId ?? "?") started", raw: line))]
        case "turn.started":
            reported = nil
            lastError = nil
            return [.agent(AgentEventData.log("turn started", raw: line))]
        case "turn.completed":
            reported = .succeeded
            lastError = nil
            var message = "turn completed"
            if let usage = object["usage"]?.objectValue, let input = usage["input_tokens"]?.intValue, let output = usage["output_tokens"]?.intValue {
                message += " (\(input) input tokens, \(output) output tokens)"
            }
            return [.agent(AgentEventData.log(message, raw: line))]
        case "turn.failed":
            let message = object["error"]?["message"]?.stringValue ?? lastError ?? "the turn failed"
            reported = .failed(message)
            return [.agent(AgentEventData.error(message, raw: line))]
        case "error":
            let message = object["message"]?.stringValue ?? object["error"]?["message"]?.stringValue ?? "error"
            lastError = message
            // "Reconnecting... 2/5 (…)": Codex retrying its model request, not a failure (yet).
            if message.hasPrefix("Reconnecting") { return [.agent(AgentEventData.log(message, raw: line))] }
            return [.agent(AgentEventData.error(message, raw: line))]
        case "item.started", "item.updated", "item.completed":
            guard let item = object["item"]?.objectValue else { return [.agent(AgentEventData.log(line, raw: line))] }
            return self.item(item, phase: type, raw: line).map { [.agent($0)] } ?? []
        default:
            return [.agent(AgentEventData.log(line, raw: line))]
        }
    }

    private func item(_ item: [String: JSONValue], phase: String, raw: String) -> [String: JSONValue]? {
        let completed = phase == "item.completed"
        let id = item["id"]?.stringValue
        func status(_ failed: Bool) -> String { completed ? (failed ? "failed" : "completed") : "running" }
        switch item["type"]?.stringValue ?? item["item_type"]?.stringValue {
        case "agent_message":
            guard completed, let text = item["text"]?.stringValue, !text.isEmpty else { return nil }
            return AgentEventData.text(text, raw: raw)
        case "reasoning":
            guard completed, let text = item["text"]?.stringValue, !text.isEmpty else { return nil }
            return AgentEventData.log("reasoning: \(AgentEventData.tail(text, limit: 500))", raw: raw)
        case "command_execution":
            guard phase != "item.updated" else { return nil }
            let exitCode = item["exit_code"]?.intValue
            let failed = item["status"]?.stringValue == "failed" || (exitCode.map { $0 != 0 } ?? false)
            return AgentEventData.tool(
                name: "shell", input: AgentEventData.summary(of: item["command"]),
                output: completed ? (item["aggregated_output"]?.stringValue ?? "") : nil,
                status: status(failed), exitCode: completed ? exitCode : nil, id: id, raw: raw
            )
        case "file_change":
            guard phase != "item.updated" else { return nil }
            let changes = (item["changes"]?.arrayValue ?? []).map { change in
                "\(change["kind"]?.stringValue ?? "change") \(change["path"]?.stringValue ?? "?")"
            }
            return AgentEventData.tool(
                name: "apply_patch", input: changes.joined(separator: ", "), output: nil,
                status: status(item["status"]?.stringValue == "failed"), id: id, raw: raw
            )
        case "mcp_tool_call":
            guard phase != "item.updated" else { return nil }
            let name = [item["server"]?.stringValue, item["tool"]?.stringValue].compactMap { $0 }.joined(separator: ".")
            let failed = item["status"]?.stringValue == "failed" || item["error"].map { $0 != .null } ?? false
            let output = item["error"]?["message"]?.stringValue ?? item["result"].map(\.flattenedText)
            return AgentEventData.tool(
                name: name.isEmpty ? "mcp" : name, input: AgentEventData.summary(of: item["arguments"]),
                output: completed ? output : nil, status: status(failed), id: id, raw: raw
            )
        case "web_search":
            guard phase != "item.updated" else { return nil }
            return AgentEventData.tool(
                name: "web_search", input: item["query"]?.stringValue, output: nil, status: status(false), id: id, raw: raw
            )
        case "todo_list":
            guard completed || phase == "item.started" else { return nil }
            let items = (item["items"]?.arrayValue ?? []).map { entry in
                "[\(entry["completed"]?.boolValue == true ? "x" : " ")] \(entry["text"]?.stringValue ?? "")"
            }
            return AgentEventData.log("todo: " + items.joined(separator: "; "), raw: raw)
        case "error":
            return AgentEventData.error(item["message"]?.stringValue ?? "error", raw: raw)
        default:
            return completed ? AgentEventData.log(raw, raw: raw) : nil
        }
    }
}
