import CloudAgentProtocol
import Foundation

/// The adapters cloud-agent has: how an agent is started and how its output is read.
public enum AgentKind: String, Sendable, CaseIterable, Codable {
    /// The built-in offline agent (the runtime's `scripted-agent` subcommand).
    case scripted
    /// Anthropic's Claude Code CLI (`claude -p --output-format stream-json`).
    case claudeCode = "claude-code"
    /// OpenAI's Codex CLI (`codex exec --json`).
    case codex
    /// OpenCode, over ACP (`opencode acp`).
    case opencode
    /// Kilo CLI, over ACP (`kilo acp`).
    case kilo
    /// Any program declared in the agents file.
    case command
    /// Any Agent Client Protocol agent declared in the agents file (`"protocol": "acp"`).
    case acp

    /// The real agents, found on PATH under `binaryName` or at `CLOUD_AGENT_<X>_BIN`.
    public static let realAgents: [AgentKind] = [.claudeCode, .codex, .opencode, .kilo]

    /// The executable's usual name on PATH.
    public var binaryName: String? {
        switch self {
        case .claudeCode: "claude"
        case .codex: "codex"
        case .opencode: "opencode"
        case .kilo: "kilo"
        case .scripted, .command, .acp: nil
        }
    }

    /// How the agent takes a session's MCP servers: nil when it takes none. ACP agents say in
    /// `initialize` whether they take HTTP servers; the runtime leaves them out when they do not.
    public var mcpTransports: (stdio: Bool, http: Bool)? {
        switch self {
        case .claudeCode, .codex, .opencode, .kilo, .acp: (true, true)
        case .scripted, .command: nil
        }
    }

    /// The environment variable that names the binary (`CLOUD_AGENT_CLAUDE_BIN`, …).
    public var binaryVariable: String? {
        binaryName.map { "CLOUD_AGENT_\($0.uppercased())_BIN" }
    }
}

/// `mode` as agents understand it: a read-only mode (`ask`, `architect`, `plan`, …) lets the
/// agent look but not change; anything else (`code`, none) lets it work freely inside the
/// sandbox, which is the permission boundary.
public enum AgentMode {
    public static let readOnlyModes: Set<String> = ["ask", "architect", "plan", "read-only", "readonly", "review"]

    public static func isReadOnly(_ mode: String?) -> Bool {
        guard let mode else { return false }
        return readOnlyModes.contains(mode.lowercased())
    }
}

/// One agent of the agents file: a `command` agent, or an ACP agent.
public struct CommandAgentDeclaration: Sendable, Equatable {
    public enum Output: String, Sendable, Codable {
        /// JSON objects, one per line, normalized like the scripted agent's (`{"type":"text"|"tool"|"log"|"error", …}`).
        case jsonl
        /// Plain text: each line an `output` event.
        case text
    }

    public var name: String
    /// The program (absolute, or found on PATH).
    public var executable: String
    /// The arguments after it, with `{prompt}`, `{model}`, `{mode}`, `{conversationId}`.
    public var arguments: [String]
    public var output: Output
    /// What `GET /v1/agents` shows as the version (the file may say; else probed with `versionArguments`).
    public var version: String?
    public var versionArguments: [String]?
    /// `acp` for an Agent Client Protocol agent (its `output` is then irrelevant); nil otherwise.
    public var `protocol`: String?
    /// An ACP agent's answer timeout as written (`30s`, `500ms`), parsed by the registry.
    public var timeout: String?

    /// The kind `GET /v1/agents` shows: `acp` or `command`.
    public var kind: AgentKind { self.protocol == AgentLaunch.acp ? .acp : .command }
}

/// `CLOUD_AGENT_AGENTS_FILE`: JSON declaring extra agents: `command` agents (a process per
/// execution, its output read as text or JSON lines) and ACP agents (`"protocol": "acp"`).
///
/// ```json
/// {"agents": [
///   {"name": "aider", "command": ["aider", "--yes", "--message", "{prompt}"], "output": "text"},
///   {"name": "my-bot", "command": ["/opt/bot/run", "--json"], "output": "jsonl", "version": "1.2"},
///   {"name": "claude-acp", "command": ["claude-code-acp"], "protocol": "acp", "timeout": "90s"}
/// ]}
/// ```
public enum AgentsFile {
    public struct Invalid: Error, Equatable, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    private struct Entry: Decodable {
        var name: String
        var command: [String]
        var output: String?
        var version: String?
        var versionCommand: [String]?
        var `protocol`: String?
        var timeout: String?
    }

    private struct File: Decodable {
        var agents: [Entry]
    }

    /// The declarations, checked: names unique, not a built-in's, `[a-z0-9][a-z0-9._-]{0,63}`;
    /// a non-empty command; `output` `jsonl` or `text` (default `text`); `protocol` absent or
    /// `acp` (then `output` must be absent, and placeholders are not allowed: an ACP agent gets its
    /// prompts over the protocol); `timeout` only with `acp`.
    public static func parse(_ data: Data) throws(Invalid) -> [CommandAgentDeclaration] {
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: data)
        } catch {
            throw Invalid("not an agents file ({\"agents\": [{\"name\", \"command\": [..], \"output\"}]}): \(error)")
        }
        var seen: Set<String> = []
        var declarations: [CommandAgentDeclaration] = []
        for (index, entry) in file.agents.enumerated() {
            let field = "agents[\(index)]"
            guard isValidName(entry.name) else {
                throw Invalid("\(field).name \"\(entry.name)\" must match [a-z0-9][a-z0-9._-]{0,63}")
            }
            guard AgentKind(rawValue: entry.name) == nil else { throw Invalid("\(field).name \"\(entry.name)\" is a built-in agent") }
            guard seen.insert(entry.name).inserted else { throw Invalid("\(field).name \"\(entry.name)\" is declared twice") }
            guard let executable = entry.command.first, !executable.isEmpty else { throw Invalid("\(field).command must name a program") }
            let output: CommandAgentDeclaration.Output
            switch entry.output ?? "text" {
            case "jsonl", "json": output = .jsonl
            case "text": output = .text
            default: throw Invalid("\(field).output must be \"jsonl\" or \"text\"")
            }
            let arguments = Array(entry.command.dropFirst())
            switch entry.protocol {
            case nil:
                guard entry.timeout == nil else { throw Invalid("\(field).timeout is only for \"protocol\": \"acp\" agents") }
            case AgentLaunch.acp?:
                guard entry.output == nil else { throw Invalid("\(field).output does not apply to an ACP agent (it speaks JSON-RPC)") }
                let placeholders = ["{prompt}", "{model}", "{mode}", "{conversationId}"]
                if let placeholder = placeholders.first(where: { placeholder in arguments.contains { $0.contains(placeholder) } }) {
                    throw Invalid("\(field).command: an ACP agent gets its prompts over the protocol, not in \"\(placeholder)\"")
                }
            case let other?:
                throw Invalid("\(field).protocol \"\(other)\" is not known (only \"acp\")")
            }
            declarations.append(
                CommandAgentDeclaration(
                    name: entry.name, executable: executable, arguments: arguments, output: output,
                    version: entry.version, versionArguments: entry.versionCommand, protocol: entry.protocol, timeout: entry.timeout
                ))
        }
        return declarations
    }

    static func isValidName(_ name: String) -> Bool {
        let scalars = Array(name.unicodeScalars)
        guard (1...64).contains(scalars.count) else { return false }
        func allowed(_ scalar: Unicode.Scalar, first: Bool) -> Bool {
            switch scalar {
            case "a"..."z", "0"..."9": true
            case ".", "_", "-": !first
            default: false
            }
        }
        return scalars.enumerated().allSatisfy { allowed($1, first: $0 == 0) }
    }
}
