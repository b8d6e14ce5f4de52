import CloudAgentProtocol
import Foundation

/// Reads one prompt turn of an ACP agent: its `session/update` notifications become the data of
/// `agent` events (`{kind: text|tool|log|error, …, raw}`, the shapes every adapter produces).
///
/// - `agent_message_chunk`s are joined into one `text` event, cut at sensible boundaries: when
///   another kind of update arrives, when the turn ends, when the agent pauses (the runtime
///   calls `flush` after `AgentRuntime.acpQuietFlush` without an update), after a paragraph (a
///   blank line) once `flushCharacters` have gathered, and at `maxTextCharacters` whatever comes.
/// - `agent_thought_chunk`s are joined the same way into `log` events with `thought: true`.
/// - `tool_call` and each `tool_call_update` are `tool` events with the call's state so far
///   (name, input, status `running`/`completed`/`failed`, output, exit code), matched by
///   `toolCallId`.
/// - `plan` is a `log` event listing the entries with their status.
/// - `current_mode_update` is a `log` event; `user_message_chunk` (the user's own words echoed),
///   `available_commands_update`, `usage_update` and the like carry nothing to show and are
///   dropped; any other update is a `log` event naming it.
public struct ACPTurnReader: Sendable {
    /// Gathered chunks of the agent's message or thoughts.
    private struct Chunks: Sendable {
        var thought: Bool
        var text: String
        var count: Int
        var lastRaw: String
    }

    private struct ToolCall: Sendable {
        var title: String?
        var kind: String?
        var input: JSONValue?
        var status: String?
        var output: String?
        var exitCode: Int64?
    }

    public static let flushCharacters = 4096
    public static let maxTextCharacters = 32_768
    /// An event's `raw` (the update as the agent sent it) is cut to this many characters.
    public static let rawLimit = 16_384

    private var chunks: Chunks?
    private var tools: [String: ToolCall] = [:]
    /// The agent's message since its last update of another kind: what it said last.
    public private(set) var finalMessage = ""
    /// The session's cumulative cost in US dollars, as the agent's latest `usage_update` said
    /// (nil: none said, or not in USD).
    public private(set) var sessionCostUsd: Double?

    public init() {}

    /// Whether chunks are gathered and not yet an event (the runtime flushes them once the agent
    /// has been quiet for a moment: a pause is a boundary too).
    public var isGathering: Bool { chunks != nil }

    /// The events of one `session/update`'s `update` (`raw`: the notification's line).
    public mutating func read(update: JSONValue, raw: String) -> [[String: JSONValue]] {
        let kind = update["sessionUpdate"]?.stringValue ?? ""
        switch kind {
        case "agent_message_chunk", "agent_thought_chunk":
            let thought = kind == "agent_thought_chunk"
            guard let text = Self.text(of: update["content"]) else { return [] }
            var events: [[String: JSONValue]] = []
            if let current = chunks, current.thought != thought { events += flush() }
            if thought {
                finalMessage = ""
            } else {
                finalMessage += text
            }
            var current = chunks ?? Chunks(thought: thought, text: "", count: 0, lastRaw: raw)
            current.text += text
            current.count += 1
            current.lastRaw = raw
            chunks = current
            events += flushBoundaries()
            return events
        case "usage_update":
            // `{used, size, cost?: {amount, currency}}`: `used` and `size` are the context
            // window's, not tokens spent; the cost is the session's so far.
            if let cost = update["cost"], let amount = cost["amount"]?.doubleValue, amount.isFinite, amount >= 0,
                (cost["currency"]?.stringValue ?? "USD").uppercased() == "USD"
            {
                sessionCostUsd = amount
            }
            return []
        case "user_message_chunk", "available_commands_update", "session_info_update", "config_option_update":
            return []
        default:
            break
        }
        var events = flush()
        finalMessage = ""
        switch kind {
        case "tool_call", "tool_call_update":
            guard let id = update["toolCallId"]?.stringValue ?? update["toolCallId"].map(JSONText.encode) else {
                return events + [AgentEventData.log("a \(kind) without a toolCallId", raw: Self.cut(raw))]
            }
            var call = tools[id] ?? ToolCall()
            if let title = update["title"]?.stringValue, !title.isEmpty { call.title = title }
            if let toolKind = update["kind"]?.stringValue, !toolKind.isEmpty { call.kind = toolKind }
            if let input = update["rawInput"], input != .null { call.input = input }
            if let status = update["status"]?.stringValue { call.status = status }
            if let output = Self.output(content: update["content"], rawOutput: update["rawOutput"]) { call.output = output }
            if let exitCode = Self.exitCode(update["rawOutput"]) { call.exitCode = exitCode }
            tools[id] = call
            var data = AgentEventData.tool(
                name: call.title ?? call.kind ?? "tool",
                input: AgentEventData.summary(of: call.input) ?? call.title,
                output: call.output, status: Self.status(call.status), exitCode: call.exitCode, id: id, raw: Self.cut(raw)
            )
            if let toolKind = call.kind { data["toolKind"] = .string(toolKind) }
            events.append(data)
        case "plan":
            let entries = update["entries"]?.arrayValue ?? []
            let lines = entries.map { entry -> String in
                let mark =
                    switch entry["status"]?.stringValue {
                    case "completed": "[x]"
                    case "in_progress": "[~]"
                    default: "[ ]"
                    }
                return "\(mark) \(entry["content"]?.stringValue ?? "")"
            }
            var data = AgentEventData.log((["plan:"] + lines).joined(separator: "\n"), raw: Self.cut(raw))
            data["plan"] = .array(entries)
            events.append(data)
        case "current_mode_update":
            let mode = update["currentModeId"]?.stringValue ?? update["modeId"]?.stringValue ?? "?"
            events.append(AgentEventData.log("mode: \(mode)", raw: Self.cut(raw)))
        default:
            events.append(AgentEventData.log("session/update \(kind.isEmpty ? "without a kind" : kind)", raw: Self.cut(raw)))
        }
        return events
    }

    /// What is still gathered, at the end of the turn (or before another kind of event).
    public mutating func flush() -> [[String: JSONValue]] {
        guard let current = chunks else { return [] }
        chunks = nil
        return Self.events(current.text, of: current)
    }

    /// Emits gathered text up to its last paragraph break once there is enough of it, and
    /// anything beyond `maxTextCharacters`.
    private mutating func flushBoundaries() -> [[String: JSONValue]] {
        guard var current = chunks, current.text.count >= Self.flushCharacters else { return [] }
        var events: [[String: JSONValue]] = []
        if let paragraph = current.text.range(of: "\n\n", options: .backwards) {
            events += Self.events(String(current.text[..<paragraph.upperBound]), of: current)
            current.text = String(current.text[paragraph.upperBound...])
        }
        while current.text.count >= Self.maxTextCharacters {
            let cut = current.text.index(current.text.startIndex, offsetBy: Self.maxTextCharacters)
            events += Self.events(String(current.text[..<cut]), of: current)
            current.text = String(current.text[cut...])
        }
        chunks = current.text.isEmpty ? nil : current
        return events
    }

    private static func events(_ text: String, of chunks: Chunks) -> [[String: JSONValue]] {
        let trimmed = text.trimmingCharacters(in: .newlines)
        guard !trimmed.isEmpty else { return [] }
        // One chunk: its own line. Several: the update they amount to.
        let raw =
            chunks.count == 1
            ? cut(chunks.lastRaw)
            : cut(
                ACPMessage.line([
                    "sessionUpdate": .string(chunks.thought ? "agent_thought_chunk" : "agent_message_chunk"),
                    "content": ["type": "text", "text": .string(trimmed)], "chunks": .number(Double(chunks.count)),
                ]))
        if chunks.thought {
            var data = AgentEventData.log(trimmed, raw: raw)
            data["thought"] = true
            return [data]
        }
        return [AgentEventData.text(trimmed, raw: raw)]
    }

    /// The text of a content block (`{"type": "text", "text"}`; a link or resource by its name).
    static func text(of content: JSONValue?) -> String? {
        guard let content else { return nil }
        switch content["type"]?.stringValue {
        case "text": return content["text"]?.stringValue
        case "resource_link": return content["name"]?.stringValue ?? content["uri"]?.stringValue
        case "resource": return content["resource"]?["text"]?.stringValue ?? content["resource"]?["uri"]?.stringValue
        case let type?: return "[\(type)]"
        case nil: return content.stringValue
        }
    }

    /// A tool call's output: its content (text, diffs, terminals), else its `rawOutput`.
    static func output(content: JSONValue?, rawOutput: JSONValue?) -> String? {
        let parts = (content?.arrayValue ?? []).compactMap { item -> String? in
            switch item["type"]?.stringValue {
            case "content": text(of: item["content"])
            case "diff": "diff \(item["path"]?.stringValue ?? "")"
            case "terminal": "terminal \(item["terminalId"]?.stringValue ?? "")"
            default: nil
            }
        }
        if !parts.isEmpty { return parts.joined(separator: "\n") }
        guard let rawOutput, rawOutput != .null else { return nil }
        if let object = rawOutput.objectValue {
            for key in ["output", "stdout", "result", "content", "error"] {
                if let value = object[key], value != .null { return value.flattenedText }
            }
        }
        return rawOutput.flattenedText
    }

    static func exitCode(_ rawOutput: JSONValue?) -> Int64? {
        rawOutput?["exitCode"]?.intValue ?? rawOutput?["exit_code"]?.intValue ?? rawOutput?["metadata"]?["exit"]?.intValue
    }

    /// ACP's `pending`/`in_progress`/`completed`/`failed` as the tool events say it.
    static func status(_ status: String?) -> String {
        switch status {
        case "completed": "completed"
        case "failed": "failed"
        default: "running"
        }
    }

    static func cut(_ raw: String) -> String {
        raw.count > rawLimit ? String(raw.prefix(rawLimit)) + "…" : raw
    }
}

/// How a prompt turn ended, from the agent's answer to `session/prompt`.
public enum ACPTurnOutcome {
    /// Claude Code writes a failed model call as the turn's last message (`API Error: 400 …`);
    /// ACP adapters that pass it on as text (claude-code-acp 0.5) end such a turn `end_turn`.
    public static let claudeAPIErrorPrefix = "API Error:"

    /// - Parameters:
    ///   - answer: the `session/prompt` result, or the agent's error.
    ///   - finalMessage: what the agent said last in the turn (`ACPTurnReader.finalMessage`).
    public static func outcome(_ answer: Result<JSONValue, ACPError>, finalMessage: String) -> AgentOutcome {
        switch answer {
        case .failure(let error):
            return .failed("the agent failed the prompt: \(error)")
        case .success(let result):
            let stopReason = result["stopReason"]?.stringValue
            switch stopReason {
            case "end_turn"?:
                let message = finalMessage.trimmingCharacters(in: .whitespacesAndNewlines)
                if message.hasPrefix(claudeAPIErrorPrefix) { return .failed(AgentEventData.tail(message, limit: 1000)) }
                return .succeeded
            case "max_tokens"?:
                return .failed("the agent stopped at the model's output limit (stopReason max_tokens)")
            case "max_turn_requests"?:
                return .failed("the agent stopped at its limit of model requests in one turn (stopReason max_turn_requests)")
            case "refusal"?:
                return .failed("the agent refused to go on (stopReason refusal)")
            case "cancelled"?:
                return .failed("the agent cancelled the turn (stopReason cancelled)")
            case let other?:
                return .failed("the turn ended with stopReason \(other)")
            case nil:
                return .failed("the agent's answer to session/prompt has no stopReason: \(AgentEventData.tail(JSONText.encode(result), limit: 300))")
            }
        }
    }
}

/// How tool permissions are decided: `auto` (today's only mode) lets the agent use its tools
/// inside its sandbox. Kept in one place so that `ask` (forwarding each request to the API,
/// the API contract's plans) replaces one decision, not a scattering of them.
public enum ACPPermissions {
    public enum Approvals: String, Sendable {
        case auto
    }

    public struct Decision: Sendable, Equatable {
        /// The answer to `session/request_permission`.
        public var result: JSONValue
        /// The `agent` event (kind `log`) that records it.
        public var event: [String: JSONValue]
    }

    /// With `auto`, the agent's allow-once option (else its allow-always one); an agent that
    /// offers no way to allow gets its reject option, or `cancelled`. In a read-only execution
    /// (`AgentMode.isReadOnly`) every request is rejected: what asks permission writes or runs.
    public static func decide(_ params: JSONValue, approvals: Approvals, readOnly: Bool = false, raw: String) -> Decision {
        let options = params["options"]?.arrayValue ?? []
        let tool = params["toolCall"]
        let title = tool?["title"]?.stringValue ?? AgentEventData.summary(of: tool?["rawInput"]) ?? "a tool"
        func option(_ kind: String) -> JSONValue? {
            options.first { $0["kind"]?.stringValue == kind && $0["optionId"]?.stringValue != nil }
        }
        let chosen: JSONValue?
        let decision: String
        let words: String
        switch approvals {
        case _ where readOnly:
            if let reject = option("reject_once") ?? option("reject_always") {
                (chosen, decision, words) = (reject, "deny", "rejected: the execution is read-only")
            } else {
                (chosen, decision, words) = (nil, "cancelled", "cancelled: the execution is read-only")
            }
        case .auto:
            if let once = option("allow_once") {
                (chosen, decision, words) = (once, "allow", "allowed once")
            } else if let always = option("allow_always") {
                (chosen, decision, words) = (always, "allow", "allowed (the agent offers no allow-once option)")
            } else if let reject = option("reject_once") ?? option("reject_always") {
                (chosen, decision, words) = (reject, "deny", "rejected: the agent offers no option that allows it")
            } else {
                (chosen, decision, words) = (nil, "cancelled", "cancelled: the agent offers no option to choose")
            }
        }
        var permission: [String: JSONValue] = [
            "tool": .string(title), "decision": .string(decision), "approvals": .string(approvals.rawValue),
        ]
        if let id = tool?["toolCallId"] { permission["toolCallId"] = id }
        if let chosen {
            permission["optionId"] = chosen["optionId"]
            permission["optionKind"] = chosen["kind"]
        }
        var event = AgentEventData.log("permission \(words) (approvals \(approvals.rawValue)): \(title)", raw: ACPTurnReader.cut(raw))
        event["permission"] = .object(permission)
        let outcome: JSONValue = chosen.flatMap { $0["optionId"] }.map { ["outcome": "selected", "optionId": $0] } ?? ["outcome": "cancelled"]
        return Decision(result: ["outcome": outcome], event: event)
    }

    /// A `session/request_permission` as an input request for the user (approvals `ask`):
    /// `{kind: permission, tool, input?, options}`, the agent's options as `{id, name, kind}`.
    public static func inputRequest(_ params: JSONValue) -> [String: JSONValue] {
        let tool = params["toolCall"]
        var request: [String: JSONValue] = [
            "kind": "permission", "tool": .string(tool?["title"]?.stringValue ?? tool?["kind"]?.stringValue ?? "a tool"),
        ]
        if let input = tool?["rawInput"], input != .null { request["input"] = input }
        let options = (params["options"]?.arrayValue ?? []).compactMap { option -> JSONValue? in
            guard let id = option["optionId"]?.stringValue, let kind = option["kind"]?.stringValue else { return nil }
            return ["id": .string(id), "name": .string(option["name"]?.stringValue ?? id), "kind": .string(kind)]
        }
        if !options.isEmpty { request["options"] = .array(options) }
        return request
    }

    /// The answer to `session/request_permission` for the user's decision: the option they
    /// picked, else the agent's option of the matching kind (a timeout is a reject); a
    /// cancellation, or no option to pick, is `cancelled`.
    public static func result(_ params: JSONValue, decision: String, optionId: String?) -> JSONValue {
        let options = params["options"]?.arrayValue ?? []
        func option(_ kinds: [String]) -> String? {
            for kind in kinds {
                if let id = options.first(where: { $0["kind"]?.stringValue == kind })?["optionId"]?.stringValue { return id }
            }
            return nil
        }
        let chosen: String?
        switch decision {
        case "allow", "deny", "timeout":
            if let optionId, options.contains(where: { $0["optionId"]?.stringValue == optionId }) {
                chosen = optionId
            } else {
                chosen = decision == "allow" ? option(["allow_once", "allow_always"]) : option(["reject_once", "reject_always"])
            }
        default:
            chosen = nil
        }
        guard let chosen else { return ["outcome": ["outcome": "cancelled"]] }
        return ["outcome": ["outcome": "selected", "optionId": .string(chosen)]]
    }
}

/// ACP's `elicitation/create` in form mode (the shape of MCP's): `{sessionId?, mode: "form",
/// message, requestedSchema: {type: object, properties, required?}}`, answered `{action: accept,
/// content: {FIELD: value}}`, `{action: decline}` or `{action: cancel}`. The client advertises
/// `elicitation: {form: {}}` in `initialize`.
public enum ACPElicitation {
    public static let method = "elicitation/create"

    /// The question for the user: the message; the form's schema as its input; the choices of a
    /// single enumerated field.
    public static func inputRequest(_ params: JSONValue) -> [String: JSONValue] {
        var request: [String: JSONValue] = ["kind": "question", "question": .string(params["message"]?.stringValue ?? "The agent asks for input.")]
        if let schema = params["requestedSchema"], schema != .null { request["input"] = schema }
        let fields = params["requestedSchema"]?["properties"]?.objectValue ?? [:]
        if fields.count == 1, let choices = fields.values.first?["enum"]?.arrayValue?.compactMap(\.stringValue), !choices.isEmpty {
            request["choices"] = .array(choices.map { .string($0) })
        }
        return request
    }

    /// The result for the user's decision. A text answers a form of one field (or its first
    /// required one); an object gives the fields, each converted to its schema's type where it
    /// can be (a number, an integer, a boolean). A deny or a timeout declines; a cancellation
    /// cancels.
    public static func result(decision: String, answer: JSONValue?, params: JSONValue) -> JSONValue {
        switch decision {
        case "answer":
            let fields = params["requestedSchema"]?["properties"]?.objectValue ?? [:]
            var content: [String: JSONValue] = [:]
            switch answer {
            case .object(let given)?:
                for (name, value) in given { content[name] = typed(value, fields[name]) }
            case let value?:
                let required = params["requestedSchema"]?["required"]?.arrayValue?.compactMap(\.stringValue) ?? []
                if let name = fields.count == 1 ? fields.keys.first : required.first ?? fields.keys.sorted().first {
                    content[name] = typed(value, fields[name])
                }
            case nil:
                break
            }
            return ["action": "accept", "content": .object(content)]
        case "cancelled":
            return ["action": "cancel"]
        default:
            return ["action": "decline"]
        }
    }

    /// `value` as the field's schema type wants it, when a text says it plainly.
    static func typed(_ value: JSONValue, _ schema: JSONValue?) -> JSONValue {
        guard let text = value.stringValue else { return value }
        switch schema?["type"]?.stringValue {
        case "number": return Double(text).map { .number($0) } ?? value
        case "integer": return Int64(text).map { .number(Double($0)) } ?? value
        case "boolean": return ["true": JSONValue.bool(true), "false": .bool(false)][text.lowercased()] ?? value
        default: return value
        }
    }
}

/// An ACP turn's usage: the tokens of the `session/prompt` answer's `usage` (`inputTokens`,
/// `outputTokens`, `thoughtTokens`, `cachedReadTokens`, `cachedWriteTokens`) where the agent
/// sends them, and the cost its `usage_update`s added during the turn.
public enum ACPUsage {
    /// The `usage` runtime event's data, or nil when the agent reported neither.
    /// - Parameters:
    ///   - result: the answer to `session/prompt`.
    ///   - costUsd: what the session's cost grew by during the turn, if the agent reported it.
    public static func data(result: JSONValue?, costUsd: Double?) -> [String: JSONValue]? {
        let usage = result?["usage"]?.objectValue
        guard usage != nil || costUsd != nil else { return nil }
        return AgentUsage.data(
            input: AgentUsage.count(usage?["inputTokens"]) ?? 0,
            output: (AgentUsage.count(usage?["outputTokens"]) ?? 0) + (AgentUsage.count(usage?["thoughtTokens"]) ?? 0),
            cacheRead: AgentUsage.count(usage?["cachedReadTokens"]) ?? 0, cacheWrite: AgentUsage.count(usage?["cachedWriteTokens"]) ?? 0,
            costUsd: costUsd)
    }
}
