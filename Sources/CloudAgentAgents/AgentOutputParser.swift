import CloudAgentProtocol
import Foundation

/// What one line of an agent's stdout becomes.
public enum AgentOutputItem: Sendable, Equatable {
    /// The data of one `agent` event: `{kind: text|tool|log|error, …, raw}`.
    case agent([String: JSONValue])
    /// The line as an `output` event (not something the agent's format knows).
    case output
    /// The agent asks and waits for an answer on its stdin (the scripted agent's `input_request`
    /// line, Claude Code's `can_use_tool` control request).
    case inputRequest(AgentInputRequest)
    /// The agent withdrew the request it made under this id of its own (it waits no more).
    case withdrawn(agentRequestId: String)
    /// A line to write to the agent's stdin now (an answer the runtime gives without asking
    /// anyone: an error for a control request it does not serve).
    case reply(String)
    /// The agent's turn is over: its stdin closes, so that it exits.
    case endOfInput
    /// The execution's usage so far, cumulative (`AgentUsage.data`): a `usage` runtime event.
    case usage([String: JSONValue])
}

/// The usage an agent reported, as the runtime's `usage` event carries it.
public enum AgentUsage {
    /// `{inputTokens, outputTokens, cacheReadTokens, cacheWriteTokens, costUsd?}`; input excludes
    /// the tokens read from or written to the prompt cache.
    public static func data(input: Int64, output: Int64, cacheRead: Int64 = 0, cacheWrite: Int64 = 0, costUsd: Double? = nil) -> [String: JSONValue] {
        var data: [String: JSONValue] = [
            "inputTokens": .number(Double(max(0, input))), "outputTokens": .number(Double(max(0, output))),
            "cacheReadTokens": .number(Double(max(0, cacheRead))), "cacheWriteTokens": .number(Double(max(0, cacheWrite))),
        ]
        if let costUsd, costUsd.isFinite, costUsd >= 0 { data["costUsd"] = .number(costUsd) }
        return data
    }

    /// A whole count in `value` (a JSON number), else nil.
    static func count(_ value: JSONValue?) -> Int64? {
        guard let number = value?.doubleValue, number.isFinite, number >= 0, number < 1e15 else { return nil }
        return Int64(number)
    }
}

/// A request an agent makes on its stdout and waits on: what the control plane is told, and
/// how the answer goes back.
public struct AgentInputRequest: Sendable, Equatable {
    /// `{kind: permission|question, tool?, input?, options?, question?, choices?}` (no id: the
    /// runtime gives the request its own).
    public var data: [String: JSONValue]
    public var reply: AgentReply

    public init(data: [String: JSONValue], reply: AgentReply) {
        self.data = data
        self.reply = reply
    }

    /// The agent's own id of the request.
    public var agentRequestId: String {
        switch reply {
        case .scripted(let id): id
        case .claudeCode(let id, _, _, _): id
        case .codex(let id, _, _): id
        }
    }
}

/// How the answer to an agent's request is written to its stdin.
public enum AgentReply: Sendable, Equatable {
    /// The scripted agent's answer line (`ScriptedAgentInput.answerLine`).
    case scripted(requestId: String)
    /// Claude Code's `control_response` to a `can_use_tool` request: the tool's original input
    /// goes back as `updatedInput` when allowed, with the answers filled in for a question.
    case claudeCode(requestId: String, tool: String, input: JSONValue, question: Bool)
    /// The result of a `codex app-server` request: `requestId` is its JSON-RPC `id` as JSON text.
    case codex(requestId: String, id: JSONValue, kind: CodexRequest)

    /// What a Codex request asks.
    public enum CodexRequest: Sendable, Equatable {
        /// A command or a file change: `{"decision": …}`.
        case approval
        /// Questions (`request_user_input`): `{"answers": …}`.
        case userInput([JSONValue])
        /// Codex asking before it calls an MCP tool (an `mcpServer/elicitation/request` of kind
        /// `mcp_tool_call`): `{action: accept | decline | cancel}`.
        case toolCallApproval
        /// An MCP server's form (`mcpServer/elicitation/request`, the request's params):
        /// `{action, content, _meta}`.
        case elicitation(JSONValue)
    }

    /// The line that gives the agent `decision` (allow, deny, answer, timeout, cancelled).
    public func line(decision: String, optionId: String?, answer: JSONValue?) -> String {
        switch self {
        case .scripted(let id):
            ScriptedAgentInput.answerLine(requestId: id, decision: decision, optionId: optionId, answer: answer)
        case .claudeCode(let id, _, let input, let question):
            ClaudeCodeControl.responseLine(requestId: id, input: input, question: question, decision: decision, answer: answer)
        case .codex(_, let id, let kind):
            CodexAppServerParser.responseLine(id: id, kind: kind, decision: decision, answer: answer)
        }
    }
}

/// How the agent itself says the execution went (its final `result`, `turn.completed`, …), which
/// decides the execution's status before the exit code does.
public enum AgentOutcome: Sendable, Equatable {
    case succeeded
    case failed(String)
}

/// Reads one agent's stdout, line by line. Stateful: a tool's result is matched to its call, the
/// conversation id is remembered, the outcome is the last one the agent reported.
public protocol AgentOutputParser: Sendable {
    mutating func parse(line: String) -> [AgentOutputItem]
    /// The agent's own conversation id, once it has printed one.
    var conversationId: String? { get }
    /// What the agent reported about the whole run, if it did.
    var outcome: AgentOutcome? { get }
}

public enum AgentOutputParsers {
    /// The parser for `command`'s agent (Codex's depends on the command: its app server's steps).
    public static func parser(for command: ExecuteCommand) -> any AgentOutputParser {
        if CodexAppServerParser.drives(command) {
            return CodexAppServerParser(
                prompt: command.prompt, resume: command.conversationId.flatMap { $0.isEmpty ? nil : $0 },
                model: command.model.flatMap { $0.isEmpty ? nil : $0 }, asks: command.asks, readOnly: AgentMode.isReadOnly(command.mode))
        }
        return parser(for: command.launch)
    }

    /// The parser for `launch` (nil: the built-in scripted agent).
    public static func parser(for launch: AgentLaunch?) -> any AgentOutputParser {
        switch launch.flatMap({ AgentKind(rawValue: $0.kind) }) ?? .scripted {
        case .scripted: NormalizedJSONLinesParser()
        case .claudeCode: ClaudeCodeOutputParser()
        // Codex's parser takes the command (its app server's steps): `parser(for: ExecuteCommand)`.
        case .codex: PlainTextParser()
        // ACP agents speak JSON-RPC, read by the runtime's ACP client, not line by line.
        case .opencode, .kilo, .acp: PlainTextParser()
        case .command: launch?.output == CommandAgentDeclaration.Output.jsonl.rawValue ? NormalizedJSONLinesParser() : PlainTextParser()
        }
    }
}

/// The scripted agent's format (also `command` agents with `output: jsonl`): see `AgentEventNormalizer`.
public struct NormalizedJSONLinesParser: AgentOutputParser {
    public private(set) var conversationId: String?
    public let outcome: AgentOutcome? = nil

    public init() {}

    public mutating func parse(line: String) -> [AgentOutputItem] {
        // `{"type":"usage", inputTokens, outputTokens, cacheReadTokens?, cacheWriteTokens?, costUsd?}`: cumulative.
        if let usage = AgentEventData.object(line), usage["type"] == "usage" {
            guard let input = AgentUsage.count(usage["inputTokens"]), let output = AgentUsage.count(usage["outputTokens"]) else {
                return [.agent(AgentEventData.error("a usage line without whole inputTokens and outputTokens", raw: line))]
            }
            return [
                .usage(
                    AgentUsage.data(
                        input: input, output: output, cacheRead: AgentUsage.count(usage["cacheReadTokens"]) ?? 0,
                        cacheWrite: AgentUsage.count(usage["cacheWriteTokens"]) ?? 0, costUsd: usage["costUsd"]?.doubleValue))
            ]
        }
        if var request = AgentEventData.object(line), request["type"] == "input_request" {
            request["type"] = nil
            guard let id = request.removeValue(forKey: "requestId")?.stringValue else {
                return [.agent(AgentEventData.error("an input request without a requestId", raw: line))]
            }
            return [.inputRequest(AgentInputRequest(data: request, reply: .scripted(requestId: id)))]
        }
        guard let data = AgentEventNormalizer.agentEventData(fromLine: line) else { return [.output] }
        return [.agent(data)]
    }
}

/// A `command` agent with `output: text`: every line is output.
public struct PlainTextParser: AgentOutputParser {
    public let conversationId: String? = nil
    public let outcome: AgentOutcome? = nil

    public init() {}

    public mutating func parse(line: String) -> [AgentOutputItem] { [.output] }
}

// MARK: - Shared pieces of the normalized shape

enum AgentEventData {
    /// The user's answer to one of an agent's several questions (Claude Code's AskUserQuestion,
    /// Codex's `request_user_input`): an object names its questions by the first of `names`
    /// found, else by position (`"1"`, `"2"`, …); any other answer answers every question.
    static func answer(at index: Int, names: [String?], in answer: JSONValue) -> JSONValue? {
        switch answer {
        case .object(let fields):
            for name in names.compactMap({ $0 }) { if let value = fields[name] { return value } }
            return fields[String(index + 1)]
        case .null:
            return nil
        default:
            return answer
        }
    }

    static let outputTailCharacters = 2000
    static let inputSummaryCharacters = 300

    static func text(_ text: String, raw: String) -> [String: JSONValue] {
        ["kind": .string("text"), "text": .string(text), "raw": .string(raw)]
    }

    static func log(_ message: String, raw: String) -> [String: JSONValue] {
        ["kind": .string("log"), "message": .string(message), "raw": .string(raw)]
    }

    static func error(_ message: String, raw: String) -> [String: JSONValue] {
        ["kind": .string("error"), "message": .string(message), "raw": .string(raw)]
    }

    /// `status`: `running`, `completed` or `failed`.
    static func tool(
        name: String, input: String?, output: String?, status: String, exitCode: Int64? = nil, id: String? = nil, raw: String
    ) -> [String: JSONValue] {
        var data: [String: JSONValue] = ["kind": .string("tool"), "name": .string(name), "status": .string(status), "raw": .string(raw)]
        if let input { data["input"] = .string(input) }
        if let output { data["output"] = .string(tail(output)) }
        if let exitCode { data["exitCode"] = .number(Double(exitCode)) }
        if let id { data["toolId"] = .string(id) }
        return data
    }

    /// The end of a long output (what a reader needs: the last lines, the error).
    static func tail(_ text: String, limit: Int = outputTailCharacters) -> String {
        guard text.count > limit else { return text }
        return "…" + String(text.suffix(limit))
    }

    /// One line saying what a tool was asked: the command, path or query when the input has
    /// one, else the input as compact JSON; cut to a few hundred characters.
    static func summary(of input: JSONValue?) -> String? {
        guard let input else { return nil }
        var text: String
        switch input {
        case .string(let value): text = value
        case .object(let object):
            let preferred = ["command", "cmd", "file_path", "filePath", "path", "pattern", "query", "url", "description"]
            if let key = preferred.first(where: { object[$0] != nil }), let value = object[key] {
                text = value.flattenedText
            } else {
                text = JSONText.encode(input)
            }
        default: text = JSONText.encode(input)
        }
        text = text.replacingOccurrences(of: "\n", with: " ")
        if text.count > inputSummaryCharacters { text = String(text.prefix(inputSummaryCharacters)) + "…" }
        return text
    }

    /// The line as a JSON object, if it is one.
    static func object(_ line: String) -> [String: JSONValue]? {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        guard trimmed.hasPrefix("{"), case .object(let object)? = try? JSONDecoder().decode(JSONValue.self, from: Data(trimmed.utf8)) else {
            return nil
        }
        return object
    }
}

extension JSONValue {
    /// Strings as they are, arrays of strings joined by spaces (a command as argv), else JSON.
    public var flattenedText: String {
        switch self {
        case .string(let value): value
        case .array(let items) where items.allSatisfy({ $0.stringValue != nil }): items.compactMap(\.stringValue).joined(separator: " ")
        default: JSONText.encode(self)
        }
    }
}
