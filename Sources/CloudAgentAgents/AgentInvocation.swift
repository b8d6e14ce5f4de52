import CloudAgentProtocol
import Foundation

/// How to start one execution's agent: the program, its arguments, what goes to its standard
/// input (the prompt, for agents that read it there), and variables added to its environment.
public struct AgentInvocation: Sendable, Equatable {
    public var executable: String
    public var arguments: [String]
    public var standardInput: String
    /// Set in the agent's environment unless the session's own variables already set them.
    public var defaultEnvironment: [String: String]
    /// Whether the agent's stdin stays open after `standardInput`, for the answers to its input
    /// requests (one JSON line each: `{requestId, decision, optionId?, answer?}`).
    public var answersOnStandardInput: Bool
    /// Files to write (absolute path → content, readable by the runtime's user only) before the
    /// agent starts, and to remove once it has exited: Claude Code's MCP configuration.
    public var files: [String: String]

    public init(
        executable: String, arguments: [String], standardInput: String = "", defaultEnvironment: [String: String] = [:],
        answersOnStandardInput: Bool = false, files: [String: String] = [:]
    ) {
        self.files = files
        self.executable = executable
        self.arguments = arguments
        self.standardInput = standardInput
        self.defaultEnvironment = defaultEnvironment
        self.answersOnStandardInput = answersOnStandardInput
    }
}

public struct AgentInvocationError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The headless command line of each agent. Prompts go to standard input wherever the agent reads
/// it there (a 100,000-character prompt may not fit in one argument).
public enum AgentInvocations {
    /// - Parameters:
    ///   - runtimeExecutable: the runtime itself, which is the `scripted` agent.
    ///   - environment: the agent's environment (the session's variables and secrets): Codex is
    ///     pointed at `OPENAI_BASE_URL` through a custom model provider when it is set.
    ///   - scratchDirectory: where files the agent reads at start are written (the sandbox's own `/tmp`).
    public static func invocation(
        for command: ExecuteCommand, runtimeExecutable: String, scriptedArgument: String, environment: [String: String],
        scratchDirectory: String = "/tmp"
    ) throws(AgentInvocationError) -> AgentInvocation {
        // Without a launch, only the built-in agent is known by name.
        guard let launch = command.launch ?? (command.agent == AgentKind.scripted.rawValue ? AgentLaunch(kind: AgentKind.scripted.rawValue) : nil) else {
            throw AgentInvocationError("unknown agent \(command.agent)")
        }
        guard let kind = AgentKind(rawValue: launch.kind) else { throw AgentInvocationError("unknown agent kind \(launch.kind)") }
        if kind == .scripted {
            // Interactive: the prompt as one JSON line, then the answers to its `ask` and `approve`.
            return AgentInvocation(
                executable: runtimeExecutable, arguments: [scriptedArgument, ScriptedAgentInput.interactiveFlag],
                standardInput: ScriptedAgentInput.promptLine(command.prompt), answersOnStandardInput: true
            )
        }
        guard let binary = launch.binary, !binary.isEmpty else { throw AgentInvocationError("agent \(command.agent) has no binary") }
        let readOnly = AgentMode.isReadOnly(command.mode)
        let model = command.model.flatMap { $0.isEmpty ? nil : $0 }
        let conversation = command.conversationId.flatMap { $0.isEmpty ? nil : $0 }
        let mcpServers = MCPServer.servers(command.mcpServers, environment: environment)
        switch kind {
        case .scripted:
            preconditionFailure("handled above")
        case .claudeCode:
            // Its control protocol on stdin and stdout: the prompt as a user message, then the
            // answers to its `can_use_tool` requests (ClaudeCodeControl). AskUserQuestion asks
            // that way in every mode; with approvals `ask` every tool call it would ask
            // permission for does too (`default`), with `auto` none (`bypassPermissions`).
            var arguments = ["-p", "--output-format", "stream-json", "--verbose", "--input-format", "stream-json"]
            arguments += ["--permission-prompt-tool", "stdio"]
            arguments += ["--permission-mode", readOnly ? "plan" : command.asks ? "default" : "bypassPermissions"]
            if let model { arguments += ["--model", model] }
            // The session's MCP servers, from a file: their secrets stay off the command line.
            var files: [String: String] = [:]
            if !mcpServers.isEmpty {
                let path = "\(scratchDirectory)/cloud-agent-mcp-\(command.executionId).json"
                files[path] = MCPServer.claudeConfig(mcpServers)
                arguments.append("--mcp-config=\(path)")
            }
            // One argument, so that the value can never be read as an option of its own.
            if let conversation { arguments.append("--resume=\(conversation)") }
            return AgentInvocation(
                executable: binary, arguments: arguments, standardInput: ClaudeCodeControl.promptLine(command.prompt),
                defaultEnvironment: [
                    // bypassPermissions as root is refused unless the CLI is told it is sandboxed (it is).
                    "IS_SANDBOX": "1",
                    // A service's agent does not update itself or phone home.
                    "DISABLE_AUTOUPDATER": "1",
                    "DISABLE_TELEMETRY": "1",
                    "DISABLE_ERROR_REPORTING": "1",
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                ],
                answersOnStandardInput: true, files: files
            )
        case .codex:
            // `codex app-server`: the runtime writes `initialize`, then the parser takes the next
            // steps (CodexAppServerParser): the thread (resumed when there is one), the turn, and
            // the answers to its approval requests and questions (`request_user_input`, which
            // reach the user whatever the approvals).
            var arguments = ["app-server"]
            arguments += ["-c", "features.default_mode_request_user_input=true", "-c", "suppress_unstable_features_warning=true"]
            arguments += codexProviderOverrides(environment: environment)
            arguments += MCPServer.codexOverrides(mcpServers)
            return AgentInvocation(executable: binary, arguments: arguments, standardInput: CodexAppServerParser.initializeLine, answersOnStandardInput: true)
        case .opencode, .kilo, .acp:
            // Over ACP (`opencode acp`, `kilo acp`, an agents file's command): one process for the
            // runtime's life; the prompt, mode, model and conversation go over the protocol.
            return AgentInvocation(executable: binary, arguments: launch.arguments ?? (kind == .acp ? [] : ["acp"]))
        case .command:
            let values: [String: String?] = [
                "prompt": command.prompt, "model": model, "mode": command.mode, "conversationId": conversation,
            ]
            let template = launch.arguments ?? []
            var arguments: [String] = []
            for argument in template {
                if argument.hasPrefix("{"), argument.hasSuffix("}"), let value = values[String(argument.dropFirst().dropLast())] {
                    if let value { arguments.append(value) }
                    continue
                }
                var substituted = argument
                for (name, value) in values { substituted = substituted.replacingOccurrences(of: "{\(name)}", with: value ?? "") }
                arguments.append(substituted)
            }
            let promptInArguments = template.contains { $0.contains("{prompt}") }
            return AgentInvocation(executable: binary, arguments: arguments, standardInput: promptInArguments ? "" : command.prompt)
        }
    }

    /// With `OPENAI_BASE_URL` set, Codex must be given a model provider of its own that speaks the
    /// Responses API there; otherwise it dials OpenAI's endpoints whatever the variable says.
    static func codexProviderOverrides(environment: [String: String]) -> [String] {
        guard let baseURL = environment["OPENAI_BASE_URL"], !baseURL.isEmpty else { return [] }
        let provider = "cloud-agent"
        return [
            "-c", "model_provider=\(toml(provider))",
            "-c", "model_providers.\(provider).name=\(toml("cloud-agent (OPENAI_BASE_URL)"))",
            "-c", "model_providers.\(provider).base_url=\(toml(baseURL))",
            "-c", "model_providers.\(provider).wire_api=\(toml("responses"))",
            "-c", "model_providers.\(provider).env_key=\(toml("OPENAI_API_KEY"))",
        ]
    }

    /// A TOML basic string.
    static func toml(_ text: String) -> String {
        var escaped = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": escaped += "\\\""
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            case "\t": escaped += "\\t"
            case "\r": escaped += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    escaped += String(format: "\\u%04X", scalar.value)
                } else {
                    escaped.unicodeScalars.append(scalar)
                }
            }
        }
        return "\"\(escaped)\""
    }
}

/// The scripted agent's stdin when a runtime runs it (`scripted-agent --interactive`): the
/// prompt as one JSON line `{"prompt": …}`, then one JSON line per answer to its input requests.
public enum ScriptedAgentInput {
    public static let interactiveFlag = "--interactive"

    public static func promptLine(_ prompt: String) -> String {
        JSONText.encode(["prompt": .string(prompt)]) + "\n"
    }

    /// An answer's line: `{requestId, decision, optionId?, answer?}`.
    public static func answerLine(requestId: String, decision: String, optionId: String? = nil, answer: JSONValue? = nil) -> String {
        var object: [String: JSONValue] = ["requestId": .string(requestId), "decision": .string(decision)]
        if let optionId { object["optionId"] = .string(optionId) }
        if let answer { object["answer"] = answer }
        return JSONText.encode(.object(object)) + "\n"
    }
}
