import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import HTTPTypes
import HummingbirdTesting
import Foundation
import Testing

/// Agents other than the built-in one, through the real server and runtime: the registry (OpenCode
/// and Kilo played by the ACP fixture agent, whose scenarios are `ACPAgentScenarioTests`), and
/// `command` agents from an agents file.
@Suite("Agents: registry, command agents", .processes)
struct AgentScenarioTests {
    static let fixture = TestServer.fixtures.appendingPathComponent("agents/acp-fixture").path

    func server(_ directory: TemporaryDirectory? = nil) throws -> TestServer {
        var server = try TestServer(directory: directory, timing: Timing(heartbeatIntervalMs: 200, staleThresholdMs: 5000, stopGraceMs: 1000))
        server.agentBinaries = [
            "CLOUD_AGENT_OPENCODE_BIN": Self.fixture, "CLOUD_AGENT_KILO_BIN": Self.fixture,
            "CLOUD_AGENT_CLAUDE_BIN": "/nonexistent/claude", "CLOUD_AGENT_CODEX_BIN": "/nonexistent/codex",
        ]
        let agentsFile = server.directory.url.appendingPathComponent("agents.json")
        try Data(
            #"""
            {"agents": [
              {"name": "cat-agent", "command": ["/bin/cat"], "output": "text", "version": "1.0"},
              {"name": "json-agent", "command": ["/usr/bin/python3", "-c", "import sys, json\nfor line in sys.stdin:\n    print(json.dumps({'type': 'text', 'text': line.strip() + ' ({model})'}))", "--"], "output": "jsonl"},
              {"name": "missing-agent", "command": ["/nonexistent/agent"]}
            ]}
            """#.utf8
        ).write(to: agentsFile)
        server.agentsFile = agentsFile.path
        return server
    }

    @Test("GET /v1/agents: every agent with kind, binary, version and availability; unknown and unavailable agents are 400s naming them")
    func registry() async throws {
        try await server().run { api in
            let agents = try await api.request(.get, "/v1/agents")
            #expect(agents.status == 200)
            let list = agents["agents"]?.arrayValue ?? []
            func agent(_ name: String) -> JSONValue? { list.first { $0["name"]?.stringValue == name } }
            #expect(
                list.compactMap { $0["name"]?.stringValue } == [
                    "cat-agent", "claude-code", "codex", "json-agent", "kilo", "missing-agent", "opencode", "scripted",
                ])
            #expect(agent("scripted")?["available"] == true)
            #expect(agent("opencode")?["available"] == true)
            #expect(agent("opencode")?["kind"] == "opencode")
            #expect(agent("opencode")?["binary"]?.stringValue == URL(fileURLWithPath: Self.fixture).resolvingSymlinksInPath().path)
            #expect(agent("claude-code")?["available"] == false)
            #expect(agent("claude-code")?["reason"]?.stringValue?.contains("CLOUD_AGENT_CLAUDE_BIN") == true)
            #expect(agent("cat-agent")?["kind"] == "command")
            #expect(agent("cat-agent")?["version"] == "1.0")
            #expect(agent("missing-agent")?["available"] == false)

            for (name, phrase) in [("nope", "not a known agent"), ("claude-code", "not available"), ("missing-agent", "not available")] {
                let refused = try await api.request(.post, "/v1/sessions", json: ["prompt": "hi", "agent": .string(name)])
                #expect(refused.status == 400)
                #expect(refused["error"]?["field"] == "agent")
                #expect(refused["error"]?["message"]?.stringValue?.contains(name) == true)
                #expect(refused["error"]?["message"]?.stringValue?.contains(phrase) == true)
            }
            #expect(try await api.request(.get, "/v1/sessions")["sessions"]?.arrayValue?.isEmpty == true)
        }
    }

    @Test("command agents: text output as output events, jsonl normalized with {model} filled in")
    func commandAgents() async throws {
        try await server().run { api in
            let text = try await api.createSession(["prompt": "line one\nline two", "agent": "cat-agent"])
            #expect(try await api.request(.post, "/v1/sessions/\(text)/initiate").status == 202)
            try await api.waitForExecution(text, status: "completed")
            let lines = try await api.events(text).filter { $0.type == "output" }.compactMap { $0.data["line"]?.stringValue }
            #expect(lines == ["line one", "line two"])

            let json = try await api.createSession(["prompt": "hello", "agent": "json-agent", "model": "m-7"])
            #expect(try await api.request(.post, "/v1/sessions/\(json)/initiate").status == 202)
            try await api.waitForExecution(json, status: "completed")
            let texts = try await api.events(json).filter { $0.type == "agent" }.compactMap { $0.data["text"]?.stringValue }
            #expect(texts == ["hello (m-7)"])
        }
    }

    @Test("a secret the agent prints is masked in its events, in stdout and stderr alike; plain env vars are not")
    func secretsMaskedInAgentOutput() async throws {
        try await server().run { api in
            let secret = "sk-test-\(UUID().uuidString)"
            let id = try await api.createSession([
                "prompt": "run echo key=$API_KEY region=$REGION\nrun echo $API_KEY >&2\nsay $API_KEY",
                "envVars": ["REGION": "eu-west-9"], "secrets": ["API_KEY": .string(secret)],
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed")
            let everything = try await api.request(.get, "/v1/sessions/\(id)/events?fromId=0&limit=1000").text
            #expect(!everything.contains(secret))
            let tools = try await api.events(id).filter { $0.data["kind"] == "tool" }.compactMap { $0.data["output"]?.stringValue }
            #expect(tools.contains { $0.contains("key=*** region=eu-west-9") }, "\(tools)")
        }
    }

    @Test("cloud-agent agents: one line per agent, available or why not; --json is the API's answer")
    func agentsCommand() async throws {
        let server = try server()
        try await server.run { api in
            let cli = CLIRunner(port: try #require(api.client.port), directory: server.directory.url)
            let human = try await cli.run(["agents"])
            #expect(human.exitStatus == 0, "\(human.diagnostics)")
            let lines = human.stdout.split(separator: "\n").map(String.init)
            #expect(lines.count == 8, "\(human.stdout)")
            #expect(lines.contains { $0.hasPrefix("✓ opencode") && $0.contains("acp-fixture") })
            #expect(lines.contains { $0.hasPrefix("✗ claude-code") && $0.contains("CLOUD_AGENT_CLAUDE_BIN") })
            let json = try await cli.run(["agents"], ["--json"])
            #expect(jsonLines(json.stdout).first?["agents"]?.arrayValue?.count == 8)
        }
    }

    @Test("versions are probed in the background: a --version that hangs does not delay the start; one that answers shows up")
    func versionProbes() async throws {
        var server = try TestServer()
        let agentsFile = server.directory.url.appendingPathComponent("agents.json")
        try Data(
            #"""
            {"agents": [
              {"name": "hanging-version", "command": ["/bin/sh"], "versionCommand": ["-c", "sleep 30"]},
              {"name": "quick-version", "command": ["/bin/sh"], "versionCommand": ["-c", "echo quick 9.9"]}
            ]}
            """#.utf8
        ).write(to: agentsFile)
        server.agentsFile = agentsFile.path
        let started = ContinuousClock.now
        try await server.run { api in
            #expect(ContinuousClock.now - started < .seconds(10), "the start waited for a version probe")
            @Sendable func version(_ name: String) async throws -> JSONValue? {
                try await api.request(.get, "/v1/agents")["agents"]?.arrayValue?.first { $0["name"]?.stringValue == name }?["version"]
            }
            try await eventually(within: 10, "the quick version") { try await version("quick-version") == "quick 9.9" }
            #expect(try await version("hanging-version") == .null)
            #expect(try await api.request(.get, "/v1/agents")["agents"]?.arrayValue?.first { $0["name"] == "hanging-version" }?["available"] == true)
        }
    }
}
