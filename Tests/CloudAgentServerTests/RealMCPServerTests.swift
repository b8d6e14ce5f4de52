import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import Testing

/// A session's MCP server, used by a real agent: a small stdio server written with the MCP
/// Python SDK (Tests/Fixtures/mcp/notes_server.py), run by the agent inside the session's sandbox
/// (bwrap where it works), its secret handed to it by name; the scripted model asks for its tool
/// and the call shows up as a normalized tool event.
@Suite("Real agents use a session's MCP server", .processes, .long)
struct RealMCPServerTests {
    static let fixtures = TestServer.fixtures.appendingPathComponent("mcp")
    static let python = ProcessInfo.processInfo.environment["CLOUD_AGENT_MCP_PYTHON"].flatMap { $0.isEmpty ? nil : $0 }
    static var enabled: Bool { python.map { FileManager.default.isExecutableFile(atPath: $0) } == true }
    static let agents = RealAgentScenarioTests.available
    static let skipReason: Comment = "needs Claude Code and the MCP Python SDK: eval \"$(scripts/install-agents.sh)\" (CLOUD_AGENT_MCP_PYTHON)"

    /// `serve` with the MCP server's Python and the fixture readable in every sandbox.
    static func serve(_ agent: RealAgentScenarioTests.RealAgent, extra: [String: String] = [:]) async throws -> ServeUnderTest {
        let venv = URL(fileURLWithPath: python ?? "/").deletingLastPathComponent().deletingLastPathComponent().path
        return try await ServeUnderTest(
            store: .sqlite,
            extra: [
                agent.variable: agent.binary ?? "", "CLOUD_AGENT_STALE_THRESHOLD": "20s",
                "CLOUD_AGENT_SANDBOX_EXPOSE": "\(venv),\(fixtures.path)",
            ].merging(extra) { $1 })
    }

    @Test(
        "the agent starts the session's stdio MCP server in the workspace with its secret, calls its tool when the model asks, and the call is a tool event; with approvals ask the call waits for an allow",
        .enabled(if: enabled && !agents.isEmpty, skipReason), arguments: agents)
    func agentCallsTheTool(agent: RealAgentScenarioTests.RealAgent) async throws {
        try #require(RealAgentScenarioTests.enabled(agent), RealAgentScenarioTests.skipReason)
        let claude = agent.name == "claude-code"
        // Both agents name it so: Claude Code's tool, Codex's `remember` in namespace `mcp__notes`.
        let tool = "mcp__notes__remember"
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"""
                {"turns": [
                  {"text": "Let me note that.", "tool": {"name": "\#(tool)", "input": {"text": "hello from the model"}}},
                  {"text": "Noted."}
                ]}
                """#, in: directory)
        defer { model.stop() }
        let serve = try await Self.serve(agent)
        defer { serve.tearDown(part: "\(agent.name)-mcp") }
        try await serve.start()
        let token = "notes-token-1234"
        let settings = agent.settings(modelServer: model.url)
        var secrets = settings.secrets.objectValue ?? [:]
        secrets["NOTES_TOKEN"] = .string(token)
        var body: [String: JSONValue] = [
            "prompt": "Remember hello", "agent": .string(agent.name), "approvals": "ask",
            "envVars": settings.envVars, "secrets": .object(secrets),
            "mcpServers": [
                "notes": [
                    "command": .string(Self.python!), "args": [.string(Self.fixtures.appendingPathComponent("notes_server.py").path)],
                    "env": ["NOTES_TOKEN": ["secret": "NOTES_TOKEN"]],
                ]
            ],
        ]
        // Codex's default model reaches tools through its JavaScript `exec`; gpt-5 calls them directly.
        if !claude { body["model"] = "gpt-5" }
        let created = try await serve.request("POST", "/v1/sessions", json: .object(body))
        try #require(created.status == 201, "\(created.text)")
        let id = try #require(created["sessionId"]?.stringValue)
        #expect(created["sandbox"]?.stringValue == (await bwrapWorks() ? "bwrap" : "none"), "the sandbox auto picks")
        #expect(try await serve.request("POST", "/v1/sessions/\(id)/initiate").status == 202)

        // Both ask before the tool runs (Codex through an elicitation of kind mcp_tool_call).
        let permission = try await AgentsThatAskTests.pending(serve, id, kind: "permission", within: 90)
        #expect(permission["tool"] == "mcp__notes__remember")
        #expect(permission["input"]?["text"] == "hello from the model")
        #expect(try await AgentsThatAskTests.answer(serve, id, try #require(permission["requestId"]?.stringValue), ["decision": "allow"]).status == 200)

        let ended = try await serve.waitForEnd(id, within: 90)
        #expect(ended["latestExecution"]?["status"] == "completed", "\(ended.text)\n\(serve.diagnostics)")
        let events = try await serve.events(id)
        let tools = events.filter { $0["type"] == "agent" && $0["data"]?["kind"] == "tool" }.compactMap { $0["data"] }
        let completed = tools.first { ($0["name"] == "mcp__notes__remember" || $0["name"] == "notes.remember") && $0["status"] == "completed" }
        // MCP 2.x answers with structured content: `{"result": "…"}`.
        #expect(
            completed?["output"]?.stringValue?.contains("remembered: hello from the model (token: \(token.count) chars)") == true,
            "tool events: \(tools.map { JSONText.encode($0) }); agent events: \(events.filter { $0["type"] == "agent" }.compactMap { $0["data"]?["message"]?.stringValue ?? $0["data"]?["text"]?.stringValue })"
        )
        let workspace = serve.directory.url.appendingPathComponent("data/workspaces/\(id)")
        #expect((try? String(contentsOf: workspace.appendingPathComponent("mcp-notes.txt"), encoding: .utf8)) == "hello from the model\n")
        #expect(!JSONText.encode(.array(events)).contains(token), "the secret appeared in an event")
    }
}
