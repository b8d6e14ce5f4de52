import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentSandbox
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Testing

/// The real Claude Code and Codex CLIs, end to end through the real server and runtime, offline:
/// each session points the CLI at a `cloud-agent-model-server` on loopback that plays a script of
/// model turns (docs/model-server.md). The CLIs come from PyPI (scripts/install-agents.sh, run by
/// CI); without them these tests are skipped, saying why.
@Suite("Real agents end to end (Claude Code, Codex) against the scripted model server", .serialized, .long)
struct RealAgentScenarioTests {
    /// One real agent: its name, its binary, and the session settings that point it at the model server.
    struct RealAgent: Sendable, CustomTestStringConvertible {
        var name: String
        var variable: String
        var binaryName: String

        var testDescription: String { name }

        /// Found as the server finds it: `CLOUD_AGENT_<NAME>_BIN`, else on PATH.
        var binary: String? {
            ExecutableLookup.find(ProcessInfo.processInfo.environment[variable].flatMap { $0.isEmpty ? nil : $0 } ?? binaryName)
        }

        /// The session's env vars and secrets for a model server at `url`.
        func settings(modelServer url: String) -> (envVars: JSONValue, secrets: JSONValue) {
            switch name {
            case "claude-code": (["ANTHROPIC_BASE_URL": .string(url)], ["ANTHROPIC_API_KEY": "sk-ant-offline-test"])
            default: (["OPENAI_BASE_URL": .string(url + "/v1")], ["OPENAI_API_KEY": "sk-offline-test"])
            }
        }
    }

    static let claude = RealAgent(name: "claude-code", variable: "CLOUD_AGENT_CLAUDE_BIN", binaryName: "claude")
    static let codex = RealAgent(name: "codex", variable: "CLOUD_AGENT_CODEX_BIN", binaryName: "codex")
    static let available = [claude, codex].filter { $0.binary != nil }
    static let modelServerBinary = TestServer.buildProducts.appendingPathComponent("cloud-agent-model-server")

    static var skipReason: Comment {
        "set CLOUD_AGENT_CLAUDE_BIN / CLOUD_AGENT_CODEX_BIN (eval \"$(scripts/install-agents.sh)\") and build cloud-agent-model-server"
    }

    static func enabled(_ agent: RealAgent) -> Bool {
        agent.binary != nil && FileManager.default.isExecutableFile(atPath: modelServerBinary.path)
    }

    func server(for agent: RealAgent, sandbox: SandboxMode = .auto) throws -> TestServer {
        var server = try TestServer(timing: Timing(heartbeatIntervalMs: 250, staleThresholdMs: 20_000, pendingTimeoutMs: 30_000, stopGraceMs: 2000))
        server.sandbox = sandbox
        server.agentBinaries = [agent.variable: agent.binary ?? ""]
        return server
    }

    func session(_ api: TestAPI, agent: RealAgent, model: ModelServer, prompt: String, repo: URL) async throws -> SessionID {
        let settings = agent.settings(modelServer: model.url)
        return try await api.createSession([
            "prompt": .string(prompt), "agent": .string(agent.name), "repo": ["url": .string(repo.path)],
            "envVars": settings.envVars, "secrets": settings.secrets,
        ])
    }

    @Test(
        "a tool call writes a file in the workspace and a final text follows, as normalized events; after an idle stop, a follow-up resumes the same conversation",
        .enabled(if: !available.isEmpty, skipReason), arguments: available
    )
    func toolCallTextAndResume(agent: RealAgent) async throws {
        try #require(Self.enabled(agent), Self.skipReason)
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"""
                {"turns": [
                  {"text": "Let me write the file.", "shell": "echo written-by-the-agent > agent-note.txt", "description": "Write agent-note.txt"},
                  {"text": "I wrote agent-note.txt for you."},
                  {"text": "This is the second answer."}
                ]}
                """#, in: directory)
        defer { model.stop() }
        let repo = try await makeGitRepository(in: directory)
        // The real sandbox when it works here (bwrap), so that the CLI is shown to run inside it;
        // a short idle timeout, so that the follow-up comes after an idle stop (a cold start).
        var server = try server(for: agent, sandbox: .auto)
        server.timing.idleTimeoutMs = 1500
        try await server.run { api in
            let id = try await session(api, agent: agent, model: model, prompt: "Write agent-note.txt", repo: repo)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let first = try await api.waitForExecution(id, status: "completed", within: 90)
            let firstId = try #require(first["executionId"]?.stringValue)
            // The agent's own usage report (the model server's token counts; Claude Code adds a cost).
            #expect((first["usage"]?["inputTokens"]?.doubleValue ?? 0) > 0, "usage: \(first["usage"] ?? .null)")
            #expect((first["usage"]?["outputTokens"]?.doubleValue ?? 0) > 0)
            #expect(first["usage"]?["source"] == "agent")
            let workspace = api.plane.configuration.dataDirectory.appendingPathComponent("workspaces/\(id.rawValue)")
            #expect(try String(contentsOf: workspace.appendingPathComponent("agent-note.txt"), encoding: .utf8) == "written-by-the-agent\n")

            let agentEvents = try await api.events(id).filter { $0.type == "agent" && $0.executionId == firstId }
            let tools = agentEvents.filter { $0.data["kind"] == "tool" }
            #expect(
                tools.contains { $0.data["status"] == "completed" && $0.data["input"]?.stringValue?.contains("agent-note.txt") == true },
                "tool events: \(tools.map(\.data))")
            let texts = agentEvents.filter { $0.data["kind"] == "text" }.compactMap { $0.data["text"]?.stringValue }
            #expect(texts.contains("I wrote agent-note.txt for you."), "texts: \(texts)")
            #expect(agentEvents.allSatisfy { $0.data["raw"]?.stringValue?.hasPrefix("{") == true })
            let conversation = try #require(try await api.request(.get, "/v1/sessions/\(id)")["agentConversationId"]?.stringValue)

            // The runtime goes idle and is stopped; the agent's transcript stays in the session's HOME.
            _ = try await api.waitForRuntime(id, state: "stopped", within: 15)
            let mainBefore = try model.recorded().filter { $0.main }.count
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "And now?"]).status == 202)
            let second = try await api.waitForExecution(id, status: "completed", within: 90)
            let secondId = try #require(second["executionId"]?.stringValue)
            #expect(second["executionId"]?.stringValue != firstId)
            let secondTexts = try await api.events(id).filter { $0.executionId == secondId && $0.data["kind"] == "text" }.compactMap {
                $0.data["text"]?.stringValue
            }
            #expect(secondTexts.contains("This is the second answer."), "texts: \(secondTexts)")
            // The model server saw the first turn in the follow-up's request: the conversation was resumed.
            let followUp = try #require(try model.recorded().filter { $0.main }.dropFirst(mainBefore).first)
            #expect(followUp.messages.contains("I wrote agent-note.txt for you."), "the follow-up carried: \(followUp.messages.prefix(2000))")
            #expect(followUp.messages.contains("And now?"))
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["agentConversationId"]?.stringValue == conversation)
        }
    }

    @Test(
        "interrupt during a slow tool call stops the agent and its tool; the execution ends interrupted (user)",
        .enabled(if: !available.isEmpty, skipReason), arguments: available)
    func interruptSlowTool(agent: RealAgent) async throws {
        try #require(Self.enabled(agent), Self.skipReason)
        let directory = try TemporaryDirectory()
        let seconds = "61.\(Int.random(in: 100_000...999_999))"
        // Not a bare `sleep`: Claude Code refuses a standalone sleep of more than a few seconds.
        let model = try await ModelServer.start(
            script: #"{"turns": [{"shell": "sh -c 'sleep \#(seconds)'", "description": "Wait"}, {"text": "done"}]}"#, in: directory)
        defer { model.stop() }
        let repo = try await makeGitRepository(in: directory)
        try await server(for: agent).run { api in
            let id = try await session(api, agent: agent, model: model, prompt: "Wait a minute", repo: repo)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let pattern = "'[s]leep \(seconds)'"
            try await eventually(within: 60, "the agent's slow tool to run") { try await shell("pgrep -f \(pattern) || true").isEmpty == false }
            let answer = try await api.request(.post, "/v1/sessions/\(id)/interrupt")
            #expect(answer["interrupted"] == true)
            let ended = try await api.waitForExecution(id, status: "interrupted", within: 30)
            #expect(ended["interruptReason"] == "user")
            try await eventually(within: 15, "the tool's process to be gone") { try await shell("pgrep -f \(pattern) || true").isEmpty }
        }
    }

    @Test(
        "Codex reports usage during its turn: at its token budget (approvals ask) the real CLI is held, every process of it stopped, behind a budget request; each allow lets it go on, and it finishes its work",
        .enabled(if: enabled(codex), skipReason))
    func codexHeldAtItsBudget() async throws {
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"""
                {"turns": [
                  {"text": "Writing the first file.", "shell": "echo one > one.txt", "description": "Write one.txt"},
                  {"text": "Writing the second file.", "shell": "echo two > two.txt", "description": "Write two.txt"},
                  {"text": "Both files are written."}
                ]}
                """#, in: directory)
        defer { model.stop() }
        let repo = try await makeGitRepository(in: directory)
        try await server(for: Self.codex).run { api in
            let settings = Self.codex.settings(modelServer: model.url)
            let id = try await api.createSession([
                "prompt": "Write one.txt and two.txt", "agent": "codex", "repo": ["url": .string(repo.path)], "envVars": settings.envVars,
                "secrets": settings.secrets, "approvals": "ask", "budget": ["maxTokens": 1],
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            var allowed = 0
            var held = 0
            let deadline = ContinuousClock.now + .seconds(120)
            while ContinuousClock.now < deadline {
                let status = try await api.request(.get, "/v1/sessions/\(id)")["latestExecution"]?["status"]?.stringValue
                if status == "completed" || status == "failed" || status == "interrupted" { break }
                let requests = try await api.request(.get, "/v1/sessions/\(id)/input-requests")["requests"]?.arrayValue ?? []
                if let pending = requests.first(where: { $0["status"] == "pending" }), let requestId = pending["requestId"]?.stringValue {
                    // With approvals ask, Codex also asks before each shell command: allowed too.
                    if pending["kind"] == "budget" {
                        // Held: every live process of the real CLI is stopped while the request waits.
                        try await eventually(within: 15, "Codex's processes to be stopped") {
                            let states = try await api.agentProcesses(id).compactMap { BudgetScenarioTests.state($0.pid) }.filter { $0 != "Z" }
                            return !states.isEmpty && states.allSatisfy { $0 == "T" }
                        }
                        held += 1
                    }
                    let answer = try await api.request(.post, "/v1/sessions/\(id)/input-requests/\(requestId)", json: ["decision": "allow"])
                    #expect(answer.status == 200, "\(answer.text)")
                    if pending["kind"] == "budget" { allowed += 1 }
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            let view = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(view["latestExecution"]?["status"] == "completed", "\(view["latestExecution"] ?? .null)")
            #expect(held >= 1 && view["budget"]?["raises"]?.doubleValue == Double(allowed), "held \(held), allowed \(allowed): \(view["budget"] ?? .null)")
            let workspace = api.plane.configuration.dataDirectory.appendingPathComponent("workspaces/\(id.rawValue)")
            #expect(try String(contentsOf: workspace.appendingPathComponent("two.txt"), encoding: .utf8) == "two\n")
            let log = try await api.request(.get, "/v1/sessions/\(id)/logs?tail=1000").text
            #expect(log.contains("agent paused") && log.contains("agent resumed"))
        }
    }

    @Test("a model error ends the execution failed with the agent's own message", .enabled(if: !available.isEmpty, skipReason), arguments: available)
    func modelError(agent: RealAgent) async throws {
        try #require(Self.enabled(agent), Self.skipReason)
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"{"turns": [{"error": {"status": 400, "message": "the scripted model refuses this request"}, "times": 20}]}"#, in: directory
        )
        defer { model.stop() }
        let repo = try await makeGitRepository(in: directory)
        try await server(for: agent).run { api in
            let id = try await session(api, agent: agent, model: model, prompt: "Do something", repo: repo)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let failed = try await api.waitForExecution(id, status: "failed", within: 90)
            let error = failed["error"]?.stringValue ?? ""
            #expect(error.contains("the scripted model refuses this request"), "error: \(error)")
            let events = try await api.events(id)
            #expect(events.contains { $0.type == "agent" && $0.data["kind"] == "error" })
            #expect(events.contains { $0.type == "execution.failed" && $0.data["error"]?.stringValue == error })
        }
    }
}

/// A `cloud-agent-model-server` process on a free port, playing `script`, recording to a file.
final class ModelServer: Sendable {
    let process: Process
    let url: String
    let recordFile: URL

    struct Request: Decodable {
        var main: Bool
        var path: String
        var messagesJSON: String

        enum CodingKeys: String, CodingKey { case main, path, messages }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            main = try container.decode(Bool.self, forKey: .main)
            path = try container.decode(String.self, forKey: .path)
            let messages = try container.decode(JSONValue.self, forKey: .messages)
            messagesJSON = String(decoding: try JSONEncoder().encode(messages), as: UTF8.self)
        }

        /// The request's messages / input items as JSON text.
        var messages: String { messagesJSON }
    }

    static func start(script: String, in directory: TemporaryDirectory) async throws -> ModelServer {
        let scriptFile = directory.url.appendingPathComponent("model-script.json")
        let recordFile = directory.url.appendingPathComponent("model-requests.jsonl")
        let stdoutFile = directory.url.appendingPathComponent("model-server.out")
        try Data(script.utf8).write(to: scriptFile)
        _ = FileManager.default.createFile(atPath: stdoutFile.path, contents: nil)
        let process = Process()
        process.executableURL = RealAgentScenarioTests.modelServerBinary
        process.arguments = ["--port", "0", "--script", scriptFile.path, "--record", recordFile.path]
        process.standardOutput = try FileHandle(forWritingTo: stdoutFile)
        process.standardError = try FileHandle(forWritingTo: stdoutFile)
        try process.run()
        var url: String?
        let deadline = ContinuousClock.now + .seconds(30)
        while url == nil, ContinuousClock.now < deadline, process.isRunning {
            let text = (try? String(contentsOf: stdoutFile, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("listening on ") }) {
                url = String(line.dropFirst("listening on ".count))
            } else {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        guard let url else {
            process.terminate()
            throw TestFailure("the model server did not start: \((try? String(contentsOf: stdoutFile, encoding: .utf8)) ?? "")")
        }
        return ModelServer(process: process, url: url, recordFile: recordFile)
    }

    private init(process: Process, url: String, recordFile: URL) {
        self.process = process
        self.url = url
        self.recordFile = recordFile
    }

    func recorded() throws -> [Request] {
        let text = (try? String(contentsOf: recordFile, encoding: .utf8)) ?? ""
        return try text.split(separator: "\n").map { try JSONDecoder().decode(Request.self, from: Data($0.utf8)) }
    }

    /// SIGKILL: it holds nothing worth a graceful end, and its reaping is Foundation's (no
    /// thread blocks waiting for it).
    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
