import CloudAgentCore
import Foundation

/// What the model answers one request, before it is put in an API's wire shape.
public enum ModelReply: Sendable, Equatable {
    case message(AssistantMessage)
    case failure(ScriptedError, delay: Duration)
}

/// An assistant message: text, a tool call, or text then a tool call.
public struct AssistantMessage: Sendable, Equatable {
    public var text: String?
    public var toolCall: ModelToolCall?
    /// Silence before the response starts.
    public var delay: Duration
    /// Silence before each streamed event after the first (a slow stream).
    public var chunkDelay: Duration

    public init(text: String? = nil, toolCall: ModelToolCall? = nil, delay: Duration = .zero, chunkDelay: Duration = .zero) {
        self.text = text
        self.toolCall = toolCall
        self.delay = delay
        self.chunkDelay = chunkDelay
    }

    /// The text in streaming pieces: whole when the stream is not slowed, else word by word
    /// (each word keeps the whitespace after it).
    var textChunks: [String] {
        guard let text, !text.isEmpty else { return [] }
        guard chunkDelay > .zero else { return [text] }
        var chunks: [String] = []
        var current = ""
        for character in text {
            if !character.isWhitespace, let last = current.last, last.isWhitespace {
                chunks.append(current)
                current = ""
            }
            current.append(character)
        }
        if !current.isEmpty { chunks.append(current) }
        return chunks
    }
}

/// A concrete tool call.
public struct ModelToolCall: Sendable, Equatable {
    public enum Input: Sendable, Equatable {
        /// A JSON object (Anthropic `tool_use.input`, Responses `function_call.arguments`).
        case arguments(JSONValue)
        /// Free text (Responses `custom_tool_call.input`).
        case freeform(String)
    }

    public var name: String
    public var input: Input
    /// The Responses namespace of the tool called, if it was offered in one.
    public var namespace: String?

    public init(name: String, input: Input, namespace: String? = nil) {
        self.name = name
        self.input = input
        self.namespace = namespace
    }

    /// The input as a JSON object (free text is wrapped as `{"input": text}`).
    var argumentsObject: JSONValue {
        switch input {
        case .arguments(let value): value
        case .freeform(let text): ["input": .string(text)]
        }
    }
}

extension ScriptTurn {
    /// This turn as an answer to a request that offers `tools`.
    public func reply(offering tools: [OfferedTool]) -> ModelReply {
        switch action {
        case .error(let error):
            return .failure(error, delay: delay)
        case .text:
            return .message(AssistantMessage(text: text, delay: delay, chunkDelay: chunkDelay))
        case .shell(let command, let description):
            guard let call = ToolSelection.shellCall(command, description: description, among: tools) else {
                let names = tools.map(\.name).joined(separator: ", ")
                return .message(
                    AssistantMessage(
                        text: "The scripted model wanted to run `\(command)` but the request offers no shell tool (tools: \(names)).",
                        delay: delay, chunkDelay: chunkDelay
                    ))
            }
            return .message(AssistantMessage(text: text, toolCall: call, delay: delay, chunkDelay: chunkDelay))
        case .tool(let name, let input):
            return .message(
                AssistantMessage(
                    text: text, toolCall: ToolSelection.call(name, input: input, among: tools), delay: delay, chunkDelay: chunkDelay
                ))
        }
    }
}

/// Maps the script's agent-agnostic calls onto the tools a request really offers.
public enum ToolSelection {
    /// Shell tools by name, most specific first: Claude Code's `Bash`, Codex's `exec_command`
    /// (older Codex: `shell` with an argv array), then other agents' usual names.
    static let shellToolNames = ["Bash", "exec_command", "shell", "shell_command", "run_shell_command", "execute_command", "run_command", "bash"]
    static let defaultDescription = "Run the scripted shell command"

    /// A call of the request's shell tool that runs `command`, or nil when it offers none.
    public static func shellCall(_ command: String, description: String?, among tools: [OfferedTool]) -> ModelToolCall? {
        let functions = tools.filter { $0.kind == .function }
        for wanted in shellToolNames {
            guard let tool = functions.first(where: { $0.name == wanted }) ?? functions.first(where: { $0.name.lowercased() == wanted.lowercased() })
            else { continue }
            return ModelToolCall(name: tool.name, input: .arguments(shellArguments(command, description: description, schema: tool.properties)))
        }
        // Codex's code mode offers one JavaScript `exec` tool whose scripts reach the shell as
        // `tools.exec_command`.
        if let exec = tools.first(where: { $0.kind == .custom && $0.name == "exec" && $0.description.contains("exec_command") }) {
            return ModelToolCall(name: exec.name, input: .freeform(codeModeScript(command)))
        }
        return nil
    }

    /// The shell tool's input, shaped by its schema: `cmd` (Codex `exec_command`), `command` as a
    /// string (Claude Code `Bash`) or as an argv array (Codex `shell`), plus a `description`
    /// when the tool has one.
    static func shellArguments(_ command: String, description: String?, schema properties: [String: JSONValue]) -> JSONValue {
        var arguments: [String: JSONValue] = [:]
        if properties["cmd"] != nil {
            arguments["cmd"] = .string(command)
        } else if properties["command"]?.objectValue?["type"]?.stringValue == "array" {
            arguments["command"] = ["bash", "-lc", .string(command)]
        } else {
            arguments["command"] = .string(command)
        }
        if properties["description"] != nil {
            arguments["description"] = .string(description ?? defaultDescription)
        }
        return .object(arguments)
    }

    static func codeModeScript(_ command: String) -> String {
        "const result = await tools.exec_command({ cmd: \(JSONText.encode(.string(command))) });\ntext(JSON.stringify(result));"
    }

    /// A call of the named tool: free text for a `custom` tool, a JSON object otherwise.
    /// A script names a tool offered in a namespace as `NAMESPACE__TOOL` (Codex's MCP tools:
    /// `mcp__notes__remember` is `remember` in namespace `mcp__notes`).
    public static func call(_ name: String, input: JSONValue, among tools: [OfferedTool]) -> ModelToolCall {
        if !tools.contains(where: { $0.name == name && $0.namespace == nil }),
            let namespaced = tools.first(where: { tool in tool.namespace.map { "\($0)__\(tool.name)" } == name })
        {
            var call = self.call(namespaced.name, input: input, among: [namespaced])
            call.namespace = namespaced.namespace
            return call
        }
        if tools.first(where: { $0.name == name })?.kind == .custom {
            return ModelToolCall(name: name, input: .freeform(input.stringValue ?? JSONText.encode(input)))
        }
        if case .object = input { return ModelToolCall(name: name, input: .arguments(input)) }
        return ModelToolCall(name: name, input: .arguments(["input": input]))
    }
}
