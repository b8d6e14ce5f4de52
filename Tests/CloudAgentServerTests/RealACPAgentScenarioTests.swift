import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentSandbox
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Testing

/// A real ACP agent end to end through the real server and runtime, offline: `claude-code-acp`
/// (PyPI; a Python Agent Client Protocol agent driving the Claude Code CLI that `claude-agent-sdk`
/// bundles) against the scripted model server. It is declared in the agents file as
/// `"protocol": "acp"`; `scripts/install-agents.sh` installs it in a venv of its own and sets
/// `CLOUD_AGENT_CLAUDE_ACP_BIN`, which only these tests read. Without it they are skipped.
@Suite("A real ACP agent end to end (claude-code-acp) against the scripted model server", .serialized, .long)
struct RealACPAgentScenarioTests {
    static let binary: String? = ProcessInfo.processInfo.environment["CLOUD_AGENT_CLAUDE_ACP_BIN"]
        .flatMap { FileManager.default.isExecutableFile(atPath: $0) ? $0 : nil }
    static var enabled: Bool { binary != nil && FileManager.default.isExecutableFile(atPath: RealAgentScenarioTests.modelServerBinary.path) }
    static let skipReason: Comment = "set CLOUD_AGENT_CLAUDE_ACP_BIN (eval \"$(scripts/install-agents.sh)\") and build cloud-agent-model-server"

    /// A server whose agents file declares one ACP agent (claude-code-acp unless told otherwise).
    func server(
        idleTimeoutMs: Int64 = 60_000, sandbox: SandboxMode = .auto, agent: String = "claude-acp", command: [String] = [binary ?? "/nonexistent"]
    ) throws -> TestServer {
        var server = try TestServer(
            timing: Timing(
                idleTimeoutMs: idleTimeoutMs, heartbeatIntervalMs: 250, staleThresholdMs: 20_000, pendingTimeoutMs: 30_000, stopGraceMs: 2000
            ))
        let agentsFile = server.directory.url.appendingPathComponent("agents.json")
        let entry: JSONValue = ["agents": [["name": .string(agent), "command": .array(command.map(JSONValue.string)), "protocol": "acp", "timeout": "90s"]]]
        try JSONEncoder().encode(entry).write(to: agentsFile)
        server.agentsFile = agentsFile.path
        server.sandbox = sandbox
        return server
    }

    func session(_ api: TestAPI, model: ModelServer, prompt: String, repo: URL) async throws -> SessionID {
        try await api.createSession([
            "prompt": .string(prompt), "agent": "claude-acp", "repo": ["url": .string(repo.path)],
            "envVars": ["ANTHROPIC_BASE_URL": .string(model.url)], "secrets": ["ANTHROPIC_API_KEY": "sk-ant-offline-test"],
        ])
    }

    @Test(
        "a Bash tool call asks permission, is allowed once, writes a file; the final text ends the turn; a follow-up in the same runtime continues the conversation; after an idle stop a follow-up still completes in a new ACP session, said in an event",
        .enabled(if: enabled, skipReason)
    )
    func toolCallFollowUpsAndColdStart() async throws {
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"""
                {"turns": [
                  {"text": "Let me write the file.", "shell": "echo written-over-acp > acp-note.txt && id -u > acp-uid.txt", "description": "Write acp-note.txt"},
                  {"text": "I wrote acp-note.txt for you."},
                  {"text": "This is the second answer."},
                  {"text": "This is the answer after the cold start."}
                ]}
                """#, in: directory)
        defer { model.stop() }
        let repo = try await makeGitRepository(in: directory)
        // The real sandbox when it works here (bwrap): the agent's venv and its Python are
        // exposed read-only (`AgentRegistry.supportDirectories`), nothing else of the host.
        try await server(idleTimeoutMs: 4000, sandbox: .auto).run { api in
            let agents = try await api.request(.get, "/v1/agents")["agents"]?.arrayValue ?? []
            #expect(agents.first { $0["name"] == "claude-acp" }?["kind"] == "acp")
            let id = try await session(api, model: model, prompt: "Write acp-note.txt", repo: repo)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let first = try await api.waitForExecution(id, status: "completed", within: 120)
            let firstId = try #require(first["executionId"]?.stringValue)
            let workspace = api.plane.configuration.dataDirectory.appendingPathComponent("workspaces/\(id.rawValue)")
            #expect(try String(contentsOf: workspace.appendingPathComponent("acp-note.txt"), encoding: .utf8) == "written-over-acp\n")
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["sandbox"] == (await bwrapWorks() ? "bwrap" : "none"))
            if await bwrapWorks() {
                // Inside the sandbox the agent runs as uid 1000 and sees no home of the host's.
                #expect(try String(contentsOf: workspace.appendingPathComponent("acp-uid.txt"), encoding: .utf8) == "1000\n")
            }

            let events = try await api.events(id).filter { $0.type == "agent" && $0.executionId == firstId }
            let permission = try #require(events.first { $0.data["permission"] != nil }, "no permission event: \(events.map(\.data))")
            #expect(permission.data["permission"]?["decision"] == "allow")
            #expect(permission.data["permission"]?["optionKind"] == "allow_once")
            #expect(permission.data["message"]?.stringValue?.contains("acp-note.txt") == true)
            let tools = events.filter { $0.data["kind"] == "tool" }
            #expect(
                tools.contains { $0.data["status"] == "completed" && $0.data["input"]?.stringValue?.contains("acp-note.txt") == true },
                "tools: \(tools.map(\.data))")
            let texts = events.filter { $0.data["kind"] == "text" }.compactMap { $0.data["text"]?.stringValue }
            // Streamed chunks: one text, or several where the stream paused.
            #expect(texts.joined().hasSuffix("I wrote acp-note.txt for you."), "texts: \(texts)")
            let conversation = try #require(try await api.request(.get, "/v1/sessions/\(id)")["agentConversationId"]?.stringValue)

            // Same runtime: the same ACP session, and the model sees the first turn.
            let before = try model.recorded().filter { $0.main }.count
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "And now?"]).status == 202)
            let second = try await api.waitForExecution(id, status: "completed", within: 120)
            let secondId = try #require(second["executionId"]?.stringValue)
            let secondTexts = try await api.events(id).filter { $0.executionId == secondId && $0.data["kind"] == "text" }.compactMap {
                $0.data["text"]?.stringValue
            }
            #expect(secondTexts.joined().contains("This is the second answer."), "texts: \(secondTexts)")
            let followUp = try #require(try model.recorded().filter { $0.main }.dropFirst(before).first)
            #expect(followUp.messages.contains("I wrote acp-note.txt for you."), "the follow-up carried: \(followUp.messages.prefix(2000))")
            #expect(followUp.messages.contains("And now?"))
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["agentConversationId"]?.stringValue == conversation)

            // Idle stop; claude-code-acp keeps its sessions only in its process's memory, so the
            // cold start cannot resume it: a new ACP session, and an event saying why.
            _ = try await api.waitForRuntime(id, state: "stopped", within: 30)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "Still there?"]).status == 202)
            let third = try await api.waitForExecution(id, status: "completed", within: 120)
            let thirdId = try #require(third["executionId"]?.stringValue)
            let thirdEvents = try await api.events(id).filter { $0.executionId == thirdId && $0.type == "agent" }
            #expect(
                thirdEvents.contains {
                    $0.data["message"]?.stringValue?.hasPrefix("a new ACP session") == true && $0.data["previousAcpSession"]?.stringValue == conversation
                },
                "events: \(thirdEvents.map(\.data))")
            let thirdText = thirdEvents.compactMap { $0.data["text"]?.stringValue }.joined()
            #expect(thirdText.contains("This is the answer after the cold start."), "\(thirdText)")
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["agentConversationId"]?.stringValue != conversation)
        }
    }

    static let kimi: String? = ProcessInfo.processInfo.environment["CLOUD_AGENT_KIMI_ACP_BIN"]
        .flatMap { FileManager.default.isExecutableFile(atPath: $0) ? $0 : nil }
    static var kimiEnabled: Bool { kimi != nil && FileManager.default.isExecutableFile(atPath: RealAgentScenarioTests.modelServerBinary.path) }

    /// Kimi's configuration and (dummy) login, written by setup commands where the agent looks by
    /// default, its HOME (`~/.kimi`), inside the sandbox, as a user would: nothing of the host's
    /// is visible to it.
    static func kimiSetup(model: ModelServer) -> [JSONValue] {
        let config = """
            default_model = "scripted"
            telemetry = false
            [providers.local]
            type = "anthropic"
            base_url = "\(model.url)"
            api_key = "sk-offline-test"
            [models.scripted]
            provider = "local"
            model = "scripted"
            max_context_size = 200000
            """
        let login = #"{"access_token":"dummy","refresh_token":"","expires_at":4102444800,"scope":"","token_type":"Bearer"}"#
        let setup: [JSONValue] = [
            "mkdir -p \"$HOME/.kimi/credentials\"",
            .string("printf '%s\\n' '\(config)' > \"$HOME/.kimi/config.toml\""),
            .string("printf '%s\\n' '\(login)' > \"$HOME/.kimi/credentials/kimi-code.json\""),
        ]
        return setup
    }

    /// A second witness: Kimi Code CLI 1.50.0 (`kimi acp`, PyPI), which keeps its sessions on disk,
    /// so a cold start resumes the conversation with `session/load`. It reads its model from
    /// `$KIMI_SHARE_DIR/config.toml` and wants a (dummy) login; both are written per test.
    @Test(
        "a second real ACP agent (kimi acp): its Shell tool asks permission and runs; after an idle stop the cold start loads its session, the replayed history is not recorded again, and the model sees the first turn",
        .enabled(
            if: kimiEnabled,
            "set CLOUD_AGENT_KIMI_ACP_BIN (eval \"$(scripts/install-agents.sh)\", with Python 3.12 or later) and build cloud-agent-model-server")
    )
    func kimiLoadsItsSessionAfterAColdStart() async throws {
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"""
                {"turns": [
                  {"text": "Let me write the file.", "shell": "echo written-by-kimi > kimi-note.txt", "description": "Write kimi-note.txt"},
                  {"text": "I wrote kimi-note.txt."},
                  {"text": "Welcome back: the note is there."}
                ]}
                """#, in: directory)
        defer { model.stop() }
        let setup = Self.kimiSetup(model: model)
        let repo = try await makeGitRepository(in: directory)
        try await server(idleTimeoutMs: 4000, agent: "kimi", command: [Self.kimi ?? "/nonexistent", "acp"]).run { api in
            let id = try await api.createSession([
                "prompt": "Write kimi-note.txt", "agent": "kimi", "repo": ["url": .string(repo.path)],
                "setupCommands": .array(setup),
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let first = try await api.waitForExecution(id, status: "completed", within: 120)
            let firstId = try #require(first["executionId"]?.stringValue)
            let workspace = api.plane.configuration.dataDirectory.appendingPathComponent("workspaces/\(id.rawValue)")
            #expect(try String(contentsOf: workspace.appendingPathComponent("kimi-note.txt"), encoding: .utf8) == "written-by-kimi\n")
            let events = try await api.events(id).filter { $0.type == "agent" && $0.executionId == firstId }
            #expect(
                events.contains { $0.data["permission"]?["decision"] == "allow" && $0.data["permission"]?["optionKind"] == "allow_once" },
                "\(events.map(\.data))")
            let firstText = events.compactMap { $0.data["text"]?.stringValue }.joined()
            #expect(firstText.hasSuffix("I wrote kimi-note.txt."), "\(firstText)")
            let conversation = try #require(try await api.request(.get, "/v1/sessions/\(id)")["agentConversationId"]?.stringValue)

            _ = try await api.waitForRuntime(id, state: "stopped", within: 30)
            let before = try model.recorded().filter { $0.main }.count
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "Is the note still there?"]).status == 202)
            let second = try await api.waitForExecution(id, status: "completed", within: 120)
            let secondId = try #require(second["executionId"]?.stringValue)
            let later = try await api.events(id).filter { $0.type == "agent" && $0.executionId == secondId }
            #expect(later.first?.data["message"] == .string("ACP session \(conversation) resumed (session/load)"), "\(later.map(\.data))")
            let texts = later.filter { $0.data["kind"] == "text" }.compactMap { $0.data["text"]?.stringValue }
            #expect(texts.joined() == "Welcome back: the note is there.", "the replayed history was recorded again: \(texts)")
            let resumed = try #require(try model.recorded().filter { $0.main }.dropFirst(before).first)
            #expect(resumed.messages.contains("I wrote kimi-note.txt."), "the cold start's request carried: \(resumed.messages.prefix(2000))")
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["agentConversationId"]?.stringValue == conversation)
        }
    }

    @Test(
        "interrupt during a slow Bash tool: the turn is cancelled, the agent and the tool's process are gone; the execution ends interrupted (user)",
        .enabled(if: enabled, skipReason))
    func interruptSlowTool() async throws {
        let directory = try TemporaryDirectory()
        let seconds = "61.\(Int.random(in: 100_000...999_999))"
        let model = try await ModelServer.start(
            script: #"{"turns": [{"shell": "sh -c 'sleep \#(seconds)'", "description": "Wait"}, {"text": "done"}]}"#, in: directory)
        defer { model.stop() }
        let repo = try await makeGitRepository(in: directory)
        try await server().run { api in
            let id = try await session(api, model: model, prompt: "Wait a minute", repo: repo)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let pattern = "'[s]leep \(seconds)'"
            try await eventually(within: 90, "the agent's slow tool to run") { try await shell("pgrep -f \(pattern) || true").isEmpty == false }
            #expect(try await api.request(.post, "/v1/sessions/\(id)/interrupt")["interrupted"] == true)
            let ended = try await api.waitForExecution(id, status: "interrupted", within: 30)
            #expect(ended["interruptReason"] == "user")
            try await eventually(within: 15, "the tool's process to be gone") { try await shell("pgrep -f \(pattern) || true").isEmpty }
        }
    }

    @Test("a model error fails the execution with the agent's own message", .enabled(if: enabled, skipReason))
    func modelError() async throws {
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"{"turns": [{"error": {"status": 400, "message": "the scripted model refuses this request"}, "times": 20}]}"#, in: directory
        )
        defer { model.stop() }
        let repo = try await makeGitRepository(in: directory)
        try await server().run { api in
            let id = try await session(api, model: model, prompt: "Do something", repo: repo)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let failed = try await api.waitForExecution(id, status: "failed", within: 120)
            let error = failed["error"]?.stringValue ?? ""
            #expect(error.contains("the scripted model refuses this request"), "error: \(error)")
            let events = try await api.events(id)
            #expect(events.contains { $0.type == "agent" && $0.data["kind"] == "error" && $0.data["message"]?.stringValue == error })
            #expect(events.contains { $0.type == "execution.failed" && $0.data["error"]?.stringValue == error })
        }
    }

    @Test(
        "approvals ask: claude-code-acp's shell call that nobody answers is denied at the input timeout (picking the agent's reject option), and the agent goes on",
        .enabled(if: enabled, skipReason))
    func claudeACPTimesOut() async throws {
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"{"turns": [{"shell": "echo late > late.txt", "description": "Write late.txt"}, {"text": "Nobody answered."}]}"#, in: directory)
        defer { model.stop() }
        let repo = try await makeGitRepository(in: directory)
        var server = try server()
        server.timing.inputTimeoutMs = 3000
        try await server.run { api in
            let id = try await api.createSession([
                "prompt": "Write late.txt", "agent": "claude-acp", "approvals": "ask", "repo": ["url": .string(repo.path)],
                "envVars": ["ANTHROPIC_BASE_URL": .string(model.url)], "secrets": ["ANTHROPIC_API_KEY": "sk-ant-offline-test"],
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let execution = try await api.waitForExecution(id, status: "completed", within: 120)
            let resolved = try await api.events(id).filter { $0.type == "input.resolved" }
            #expect(resolved.map { $0.data["decision"] } == ["timeout"], "\(resolved.map(\.data))")
            #expect(resolved.first?.data["optionId"] != nil, "the agent's reject option was picked")
            let workspace = api.plane.configuration.dataDirectory.appendingPathComponent("workspaces/\(id.rawValue)")
            #expect(!FileManager.default.fileExists(atPath: workspace.appendingPathComponent("late.txt").path))
            let texts = try await api.events(id).filter { $0.type == "agent" && $0.executionId == execution["executionId"]?.stringValue }
                .compactMap { $0.data["text"]?.stringValue }.joined()
            #expect(texts.contains("Nobody answered."), "\(texts)")
        }
    }

    @Test(
        "approvals ask: claude-code-acp's permission requests wait for the user: a denied Bash call does not run and the agent goes on, an allowed one runs",
        .enabled(if: enabled, skipReason))
    func claudeACPAsks() async throws {
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"""
                {"turns": [
                  {"shell": "echo no > denied.txt", "description": "Write denied.txt"},
                  {"shell": "echo yes > allowed.txt", "description": "Write allowed.txt"},
                  {"text": "Both asked."}
                ]}
                """#, in: directory)
        defer { model.stop() }
        let repo = try await makeGitRepository(in: directory)
        try await server().run { api in
            let id = try await api.createSession([
                "prompt": "Write the files", "agent": "claude-acp", "approvals": "ask", "repo": ["url": .string(repo.path)],
                "envVars": ["ANTHROPIC_BASE_URL": .string(model.url)], "secrets": ["ANTHROPIC_API_KEY": "sk-ant-offline-test"],
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let first = try await api.pendingInput(id, within: 120)
            #expect(first["kind"] == "permission")
            #expect(first["options"]?.arrayValue?.isEmpty == false, "the agent's own options: \(first)")
            let view = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(view["latestExecution"]?["waitingForInput"] == first["requestId"])
            let denied = try await api.answerInput(id, first, ["decision": "deny"])
            #expect(denied.status == 200, "\(denied.text)")
            let second = try await api.pendingInput(id, within: 120)
            let allowed = try await api.answerInput(id, second, ["decision": "allow"])
            #expect(allowed.status == 200, "\(allowed.text)")
            try await api.waitForExecution(id, status: "completed", within: 120)
            let workspace = api.plane.configuration.dataDirectory.appendingPathComponent("workspaces/\(id.rawValue)")
            #expect(!FileManager.default.fileExists(atPath: workspace.appendingPathComponent("denied.txt").path))
            #expect((try? String(contentsOf: workspace.appendingPathComponent("allowed.txt"), encoding: .utf8)) == "yes\n")
            let resolved = try await api.events(id).filter { $0.type == "input.resolved" }.compactMap { $0.data["decision"]?.stringValue }
            #expect(resolved == ["deny", "allow"])
        }
    }

    @Test(
        "approvals ask: kimi's permission requests wait for the user: a denied shell call does not run, an allowed one does",
        .enabled(
            if: kimiEnabled,
            "set CLOUD_AGENT_KIMI_ACP_BIN (eval \"$(scripts/install-agents.sh)\", with Python 3.12 or later) and build cloud-agent-model-server")
    )
    func kimiAsks() async throws {
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"""
                {"turns": [
                  {"shell": "echo no > denied.txt", "description": "Write denied.txt"},
                  {"shell": "echo yes > allowed.txt", "description": "Write allowed.txt"},
                  {"text": "Both asked."}
                ]}
                """#, in: directory)
        defer { model.stop() }
        let repo = try await makeGitRepository(in: directory)
        try await server(agent: "kimi", command: [Self.kimi ?? "/nonexistent", "acp"]).run { api in
            let id = try await api.createSession([
                "prompt": "Write the files", "agent": "kimi", "approvals": "ask", "repo": ["url": .string(repo.path)],
                "setupCommands": .array(Self.kimiSetup(model: model)),
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let first = try await api.pendingInput(id, within: 120)
            #expect(first["kind"] == "permission")
            #expect(
                try await api.answerInput(id, first, ["decision": "deny"]).status
                    == 200)
            // Kimi ends its turn on a rejection: the next call comes with a follow-up.
            try await api.waitForExecution(id, status: "completed", within: 120)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "Write the other file"]).status == 202)
            let second = try await api.pendingInput(id, within: 120)
            #expect(
                try await api.answerInput(id, second, ["decision": "allow"]).status
                    == 200)
            try await api.waitForExecution(id, status: "completed", within: 120)
            let workspace = api.plane.configuration.dataDirectory.appendingPathComponent("workspaces/\(id.rawValue)")
            #expect(!FileManager.default.fileExists(atPath: workspace.appendingPathComponent("denied.txt").path))
            #expect((try? String(contentsOf: workspace.appendingPathComponent("allowed.txt"), encoding: .utf8)) == "yes\n")
        }
    }
}
