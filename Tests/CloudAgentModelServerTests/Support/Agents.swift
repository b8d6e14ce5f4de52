import CloudAgentCore
import CloudAgentModelServer
import CloudAgentTestSupport
import Foundation
import Testing

/// The `cloud-agent-model-server` executable, started as a user would: `--port 0`, the URL read
/// from stdout's first line, the record read from the `--record` file.
final class ModelServerProcess: Sendable {
    let process: TestProcess
    let url: String
    let recordURL: URL

    static func start(script: String, in directory: URL) async throws -> ModelServerProcess {
        let scriptURL = directory.appendingPathComponent("script.json")
        let recordURL = directory.appendingPathComponent("requests.jsonl")
        try Data(script.utf8).write(to: scriptURL)
        let process = try TestProcess(
            try PackageLayout.modelServerBinary(),
            arguments: ["--port", "0", "--script", scriptURL.path, "--record", recordURL.path],
            environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"],
            directory: directory, outputIn: directory
        )
        do {
            try await eventually(within: 30, "the model server to listen") { process.stdout.contains("\n") || !process.isRunning }
            let first = process.stdout.split(separator: "\n").first.map(String.init) ?? ""
            try #require(first.hasPrefix("listening on http://127.0.0.1:"), "first line: \(first); stderr: \(process.stderr)")
            return ModelServerProcess(process: process, url: String(first.dropFirst("listening on ".count)), recordURL: recordURL)
        } catch {
            await process.terminate(grace: .seconds(5))
            throw error
        }
    }

    private init(process: TestProcess, url: String, recordURL: URL) {
        self.process = process
        self.url = url
        self.recordURL = recordURL
    }

    /// The requests recorded so far.
    func recorded() throws -> [RecordedRequest] {
        let text = (try? String(contentsOf: recordURL, encoding: .utf8)) ?? ""
        return try text.split(separator: "\n").map { try JSONDecoder().decode(RecordedRequest.self, from: Data($0.utf8)) }
    }

    func stop() async { await process.terminate(grace: .seconds(5)) }
}

/// A temporary git repository to run an agent in, with its own HOME.
struct AgentSandbox {
    let root: URL
    let home: URL
    let workspace: URL

    init(_ name: String) throws {
        root = try makeTemporaryDirectory(name)
        home = root.appendingPathComponent("home")
        workspace = root.appendingPathComponent("workspace")
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: workspace, withIntermediateDirectories: true)
    }

    /// A sandbox whose workspace is a git repository (the agents expect one).
    static func make(_ name: String) async throws -> AgentSandbox {
        let sandbox = try AgentSandbox(name)
        try await sandbox.initRepository()
        return sandbox
    }

    private func initRepository() async throws {
        try await shell("git init -q \"\(workspace.path)\"")
    }

    func remove() { try? FileManager.default.removeItem(at: root) }

    var basicEnvironment: [String: String] {
        ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": home.path, "LANG": "C.UTF-8"]
    }
}

/// Claude Code's headless command line against the model server (docs/model-server.md).
struct ClaudeCodeCLI {
    let binary: String

    static let arguments = ["--output-format", "stream-json", "--verbose", "--permission-mode", "bypassPermissions"]

    func environment(_ sandbox: AgentSandbox, server: ModelServerProcess) -> [String: String] {
        sandbox.basicEnvironment.merging([
            "ANTHROPIC_BASE_URL": server.url,
            "ANTHROPIC_API_KEY": "scripted-model-key",
            // bypassPermissions refuses to run as root outside a declared sandbox.
            "IS_SANDBOX": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        ]) { _, new in new }
    }

    func run(_ prompt: String, resume sessionID: String? = nil, sandbox: AgentSandbox, server: ModelServerProcess) throws -> TestProcess {
        var arguments = ["-p", prompt] + Self.arguments
        if let sessionID { arguments += ["--resume", sessionID] }
        return try TestProcess(
            URL(fileURLWithPath: binary), arguments: arguments, environment: environment(sandbox, server: server),
            directory: sandbox.workspace, outputIn: sandbox.root
        )
    }
}

/// Codex's headless command line against the model server (docs/model-server.md).
struct CodexCLI {
    let binary: String

    /// `exec` options; they go before `resume` too.
    static func execOptions(baseURL: String) -> [String] {
        [
            "--json", "--skip-git-repo-check",
            // The cloud-agent sandbox is the boundary. (Codex's own workspace-write sandbox also
            // works, but not with a CODEX_HOME under /tmp: it refuses to put its helper there.)
            "--sandbox", "danger-full-access",
            "-c", "approval_policy=\"never\"",
            "-c", "model_provider=\"scripted\"",
            "-c", "model_providers.scripted.name=\"scripted\"",
            "-c", "model_providers.scripted.base_url=\"\(baseURL)/v1\"",
            "-c", "model_providers.scripted.wire_api=\"responses\"",
            "-c", "model_providers.scripted.env_key=\"OPENAI_API_KEY\"",
            // One request per scripted turn: no retries of a scripted error.
            "-c", "model_providers.scripted.request_max_retries=0",
            "-c", "model_providers.scripted.stream_max_retries=0",
        ]
    }

    func environment(_ sandbox: AgentSandbox) -> [String: String] {
        sandbox.basicEnvironment.merging([
            "CODEX_HOME": sandbox.home.appendingPathComponent(".codex").path,
            "OPENAI_API_KEY": "scripted-model-key",
        ]) { _, new in new }
    }

    func run(_ prompt: String, resume threadID: String? = nil, sandbox: AgentSandbox, server: ModelServerProcess) throws -> TestProcess {
        try FileManager.default.createDirectory(at: sandbox.home.appendingPathComponent(".codex"), withIntermediateDirectories: true)
        var arguments = ["exec"] + Self.execOptions(baseURL: server.url)
        if let threadID { arguments += ["resume", threadID] }
        arguments.append(prompt)
        return try TestProcess(
            URL(fileURLWithPath: binary), arguments: arguments, environment: environment(sandbox),
            directory: sandbox.workspace, outputIn: sandbox.root
        )
    }
}

extension [String: JSONValue] {
    /// `self["a"]?["b"]…` for nested objects.
    func value(_ path: String...) -> JSONValue? {
        var current: JSONValue? = .object(self)
        for key in path { current = current?.objectValue?[key] }
        return current
    }
}

extension JSONValue {
    /// Every string in the value, joined: to look for text wherever an API nests it.
    var compactText: String {
        switch self {
        case .string(let string): string
        case .array(let array): array.map(\.compactText).joined(separator: "\n")
        case .object(let object): object.keys.sorted().compactMap { object[$0]?.compactText }.joined(separator: "\n")
        default: ""
        }
    }
}
