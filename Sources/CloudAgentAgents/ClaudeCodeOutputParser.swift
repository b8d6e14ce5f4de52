import CloudAgentProtocol

/// Claude Code's `--output-format stream-json --verbose`: one JSON object per line.
///
/// - `{"type":"system","subtype":"init","session_id",…}` — the conversation id (resumed with
///   `--resume`); a `log` event.
/// - `{"type":"assistant","message":{"content":[…]}}` — each `text` block a `text` event, each
///   `tool_use` block `{id, name, input}` a `tool` event with status `running`.
/// - `{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id","content","is_error"}]}}`
///   — the tool's result: a `tool` event `completed` or `failed` with the output's tail.
/// - `{"type":"result","subtype":"success"|"error_…","is_error","result",…}` — the outcome: failed
///   when `is_error` or `subtype != "success"`, with the result's text (or `errors`) as the message.
///   The turn is over: the agent's stdin closes (`endOfInput`), so that it exits.
/// - `control_request` / `control_cancel_request` — its requests to ask before a tool runs, and
///   their withdrawal (`ClaudeCodeControl`).
public struct ClaudeCodeOutputParser: AgentOutputParser {
    public private(set) var conversationId: String?
    public private(set) var outcome: AgentOutcome?
    /// The tool calls seen, by id: their name and input summary, for the results.
    private var tools: [String: (name: String, input: String?)] = [:]

    public init() {}

    public mutating func parse(line: String) -> [AgentOutputItem] {
        guard let object = AgentEventData.object(line) else { return [.output] }
        if let session = object["session_id"]?.stringValue, !session.isEmpty { conversationId = session }
        switch object["type"]?.stringValue {
        case "system":
            let subtype = object["subtype"]?.stringValue ?? "system"
            if subtype == "init" {
                let model = object["model"]?.stringValue.map { ", model \($0)" } ?? ""
                var items: [AgentOutputItem] = [.agent(AgentEventData.log("session \(conversationId ?? "?") started\(model)", raw: line))]
                // The session's MCP servers that could not be used: said, not left to be guessed.
                for failure in object["mcp_server_errors"]?.arrayValue ?? [] {
                    let name = failure["name"]?.stringValue ?? "?"
                    let message = failure["message"]?.stringValue ?? failure["type"]?.stringValue ?? "failed"
                    items.append(.agent(AgentEventData.error("MCP server \(name): \(message)", raw: line)))
                }
                for server in object["mcp_servers"]?.arrayValue ?? [] where server["status"]?.stringValue == "failed" {
                    items.append(.agent(AgentEventData.error("MCP server \(server["name"]?.stringValue ?? "?") failed to start", raw: line)))
                }
                return items
            }
            return [.agent(AgentEventData.log("system: \(subtype)", raw: line))]
        case "assistant":
            return blocks(object["message"]?["content"]).compactMap { assistantBlock($0, raw: line) }
        case "user":
            let items = blocks(object["message"]?["content"]).compactMap { toolResult($0, raw: line) }
            return items
        case "result":
            let usage: [AgentOutputItem] = Self.usage(of: object).map { [.usage($0)] } ?? []
            return usage + [result(object, raw: line), .endOfInput]
        case "control_request":
            return ClaudeCodeControl.controlRequest(object, raw: line)
        case "control_cancel_request":
            guard let id = object["request_id"]?.stringValue else { return [] }
            return [.withdrawn(agentRequestId: id)]
        case "control_response":
            // The answer to a request of ours: the runtime sends none.
            return []
        default:
            return [.agent(AgentEventData.log(line, raw: line))]
        }
    }

    private func blocks(_ content: JSONValue?) -> [[String: JSONValue]] {
        switch content {
        case .array(let items)?: items.compactMap(\.objectValue)
        case .string(let text)?: [["type": .string("text"), "text": .string(text)]]
        default: []
        }
    }

    private mutating func assistantBlock(_ block: [String: JSONValue], raw: String) -> AgentOutputItem? {
        switch block["type"]?.stringValue {
        case "text":
            guard let text = block["text"]?.stringValue, !text.isEmpty else { return nil }
            return .agent(AgentEventData.text(text, raw: raw))
        case "tool_use", "server_tool_use":
            let name = block["name"]?.stringValue ?? "tool"
            let input = AgentEventData.summary(of: block["input"])
            let id = block["id"]?.stringValue
            if let id { tools[id] = (name, input) }
            return .agent(AgentEventData.tool(name: name, input: input, output: nil, status: "running", id: id, raw: raw))
        case "thinking":
            guard let thinking = block["thinking"]?.stringValue, !thinking.isEmpty else { return nil }
            return .agent(AgentEventData.log("thinking: \(AgentEventData.tail(thinking, limit: 500))", raw: raw))
        default:
            return nil
        }
    }

    private func toolResult(_ block: [String: JSONValue], raw: String) -> AgentOutputItem? {
        guard block["type"]?.stringValue == "tool_result" else {
            if block["type"]?.stringValue == "text", let text = block["text"]?.stringValue {
                return .agent(AgentEventData.log(text, raw: raw))
            }
            return nil
        }
        let id = block["tool_use_id"]?.stringValue
        let call = id.flatMap { tools[$0] }
        let output: String
        switch block["content"] {
        case .string(let text)?: output = text
        case .array(let parts)?: output = parts.compactMap { $0["text"]?.stringValue }.joined(separator: "\n")
        default: output = ""
        }
        let failed = block["is_error"]?.boolValue ?? false
        return .agent(
            AgentEventData.tool(
                name: call?.name ?? "tool", input: call?.input, output: output, status: failed ? "failed" : "completed", id: id, raw: raw
            ))
    }

    /// The turn's usage in a `result`: `usage` {input_tokens, output_tokens,
    /// cache_read_input_tokens, cache_creation_input_tokens} and `total_cost_usd`.
    static func usage(of result: [String: JSONValue]) -> [String: JSONValue]? {
        let usage = result["usage"]?.objectValue
        let cost = result["total_cost_usd"]?.doubleValue
        guard usage != nil || cost != nil else { return nil }
        return AgentUsage.data(
            input: AgentUsage.count(usage?["input_tokens"]) ?? 0, output: AgentUsage.count(usage?["output_tokens"]) ?? 0,
            cacheRead: AgentUsage.count(usage?["cache_read_input_tokens"]) ?? 0, cacheWrite: AgentUsage.count(usage?["cache_creation_input_tokens"]) ?? 0,
            costUsd: cost)
    }

    private mutating func result(_ object: [String: JSONValue], raw: String) -> AgentOutputItem {
        let subtype = object["subtype"]?.stringValue ?? "success"
        let isError = object["is_error"]?.boolValue ?? false
        if isError || subtype != "success" {
            var message = object["result"]?.stringValue ?? ""
            if message.isEmpty, let errors = object["errors"]?.arrayValue {
                message = errors.map(\.flattenedText).joined(separator: "; ")
            }
            if message.isEmpty { message = "Claude Code ended with \(subtype)" }
            outcome = .failed(message)
            return .agent(AgentEventData.error(message, raw: raw))
        }
        outcome = .succeeded
        var parts = ["result: success"]
        if let turns = object["num_turns"]?.intValue { parts.append("\(turns) turn\(turns == 1 ? "" : "s")") }
        if let duration = object["duration_ms"]?.intValue { parts.append("\(duration) ms") }
        return .agent(AgentEventData.log(parts.joined(separator: ", "), raw: raw))
    }
}
