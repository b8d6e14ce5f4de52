import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The real Claude Code CLI asks through its own protocol (`can_use_tool` on stdio), through a
/// real `serve` under the sandbox `auto` picks, offline against the scripted model server: its
/// shell calls wait for an allow or a deny, its AskUserQuestion is a question whose answer
/// reaches the model, a wait survives a kill -9 of `serve`, outlasts the idle timeout, times out,
/// and an interrupt cancels it.
@Suite("Real agents that ask (Claude Code's own permission requests and questions)", .processes, .long)
struct RealAgentsThatAskTests {
    static let claude = RealAgentScenarioTests.claude

    static var enabled: Bool { RealAgentScenarioTests.enabled(claude) }

    static func serve(extra: [String: String] = [:]) async throws -> ServeUnderTest {
        try await ServeUnderTest(
            store: .sqlite, extra: ["CLOUD_AGENT_CLAUDE_BIN": claude.binary ?? "", "CLOUD_AGENT_STALE_THRESHOLD": "20s"].merging(extra) { $1 })
    }

    /// A Claude Code session pointed at `model`, initiated; its id.
    static func start(_ serve: ServeUnderTest, _ model: ModelServer, prompt: String, approvals: String, idleTimeoutMs: Int? = nil) async throws
        -> String
    {
        var body: [String: JSONValue] = [
            "prompt": .string(prompt), "agent": "claude-code", "approvals": .string(approvals),
            "envVars": ["ANTHROPIC_BASE_URL": .string(model.url)], "secrets": ["ANTHROPIC_API_KEY": "sk-ant-offline-test"],
        ]
        if let idleTimeoutMs { body["idleTimeoutMs"] = .number(Double(idleTimeoutMs)) }
        let created = try await serve.request("POST", "/v1/sessions", json: .object(body))
        try #require(created.status == 201, "\(created.text)")
        let id = try #require(created["sessionId"]?.stringValue)
        #expect(created["sandbox"]?.stringValue == (await bwrapWorks() ? "bwrap" : "none"), "the sandbox auto picks")
        let started = try await serve.request("POST", "/v1/sessions/\(id)/initiate")
        try #require(started.status == 202, "\(started.text)")
        return id
    }

    static func workspace(_ serve: ServeUnderTest, _ id: String) -> URL {
        serve.directory.url.appendingPathComponent("data/workspaces/\(id)")
    }

    @Test(
        "approvals ask: a denied shell call does not run and the agent goes on; the request outlives a kill -9 of serve; an allowed one runs; AskUserQuestion's answer reaches the model",
        .enabled(if: enabled, RealAgentScenarioTests.skipReason))
    func denyRestartAllowAnswer() async throws {
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"""
                {"turns": [
                  {"text": "First the risky one.", "shell": "echo no > denied.txt", "description": "Write denied.txt"},
                  {"shell": "echo yes > allowed.txt", "description": "Write allowed.txt"},
                  {"tool": {"name": "AskUserQuestion", "input": {"questions": [{"question": "Which colour?", "header": "Colour", "multiSelect": false,
                    "options": [{"label": "red", "description": "Red"}, {"label": "blue", "description": "Blue"}]}]}}},
                  {"text": "All done."}
                ]}
                """#, in: directory)
        defer { model.stop() }
        let serve = try await Self.serve()
        defer { serve.tearDown(part: "claude-ask") }
        try await serve.start()
        let id = try await Self.start(serve, model, prompt: "Write the files", approvals: "ask")

        let denied = try await AgentsThatAskTests.pending(serve, id, kind: "permission", within: 90)
        #expect(denied["tool"] == "Bash")
        #expect(denied["input"]?["command"] == "echo no > denied.txt")
        let session = try await serve.request("GET", "/v1/sessions/\(id)")
        #expect(session["latestExecution"]?["waitingForInput"] == denied["requestId"])

        // serve dies while Claude Code waits; the runtime keeps the question open.
        try await serve.stop(with: SIGKILL)
        try await serve.start()
        let deny = try await AgentsThatAskTests.answer(serve, id, try #require(denied["requestId"]?.stringValue), ["decision": "deny"])
        #expect(deny.status == 200, "\(deny.text)")

        let allowed = try await AgentsThatAskTests.pending(serve, id, kind: "permission", within: 90)
        #expect(allowed["input"]?["command"] == "echo yes > allowed.txt")
        #expect(try await AgentsThatAskTests.answer(serve, id, try #require(allowed["requestId"]?.stringValue), ["decision": "allow"]).status == 200)

        let question = try await AgentsThatAskTests.pending(serve, id, kind: "question", within: 90)
        #expect(question["question"] == "Which colour?")
        #expect(question["choices"] == ["red", "blue"])
        #expect(try await AgentsThatAskTests.answer(serve, id, try #require(question["requestId"]?.stringValue), ["answer": "blue"]).status == 200)

        let ended = try await serve.waitForEnd(id, within: 90)
        #expect(ended["latestExecution"]?["status"] == "completed", "\(ended.text)\n\(serve.diagnostics)")
        #expect(ended["pendingInput"] == 0)
        let events = try await serve.events(id)
        #expect(events.filter { $0["type"] == "input.resolved" }.compactMap { $0["data"]?["decision"]?.stringValue } == ["deny", "allow", "answer"])
        let workspace = Self.workspace(serve, id)
        #expect(!FileManager.default.fileExists(atPath: workspace.appendingPathComponent("denied.txt").path))
        #expect((try? String(contentsOf: workspace.appendingPathComponent("allowed.txt"), encoding: .utf8)) == "yes\n")
        let texts = events.filter { $0["type"] == "agent" }.compactMap { $0["data"]?["text"]?.stringValue }
        #expect(texts.contains("All done."), "texts: \(texts)")
        // The model saw the denial, then the user's answer.
        let main = try model.recorded().filter(\.main)
        #expect(main.contains { $0.messages.contains("denied this tool call") }, "the denial never reached the model")
        #expect(try #require(main.last).messages.contains("blue"), "the answer never reached the model")
    }

    @Test(
        "approvals ask: a shell call nobody answers outlasts the idle timeout, is denied at the input timeout, and the agent goes on",
        .enabled(if: enabled, RealAgentScenarioTests.skipReason))
    func unansweredTimesOut() async throws {
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"{"turns": [{"shell": "echo late > late.txt", "description": "Write late.txt"}, {"text": "Nobody answered."}]}"#, in: directory)
        defer { model.stop() }
        let serve = try await Self.serve(extra: ["CLOUD_AGENT_INPUT_TIMEOUT": "4s"])
        defer { serve.tearDown(part: "claude-timeout") }
        try await serve.start()
        let id = try await Self.start(serve, model, prompt: "Write late.txt", approvals: "ask", idleTimeoutMs: 1000)
        let request = try await AgentsThatAskTests.pending(serve, id, kind: "permission", within: 90)
        let requestId = try #require(request["requestId"]?.stringValue)

        let ended = try await serve.waitForEnd(id, within: 90)
        #expect(ended["latestExecution"]?["status"] == "completed", "\(ended.text)")
        let events = try await serve.events(id)
        let resolved = try #require(events.first { $0["type"] == "input.resolved" && $0["data"]?["requestId"]?.stringValue == requestId })
        #expect(resolved["data"]?["decision"] == "timeout")
        #expect(resolved["data"]?["by"] == "timeout")
        // The runtime was never stopped while the agent waited (idle timeout 1 s, wait 4 s).
        let types = events.compactMap { $0["type"]?.stringValue }
        let stopped = types.firstIndex(of: "runtime.stopped")
        let completed = try #require(types.firstIndex(of: "execution.completed"))
        #expect(stopped == nil || stopped! > completed, "events: \(types)")
        #expect(!FileManager.default.fileExists(atPath: Self.workspace(serve, id).appendingPathComponent("late.txt").path))
        let texts = events.filter { $0["type"] == "agent" }.compactMap { $0["data"]?["text"]?.stringValue }
        #expect(texts.contains("Nobody answered."), "texts: \(texts)")
    }

    @Test(
        "approvals auto: shell calls run without asking, AskUserQuestion is still forwarded, and an interrupt while it waits cancels it",
        .enabled(if: enabled, RealAgentScenarioTests.skipReason))
    func autoQuestionInterrupted() async throws {
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"""
                {"turns": [
                  {"shell": "echo auto > auto.txt", "description": "Write auto.txt"},
                  {"tool": {"name": "AskUserQuestion", "input": {"questions": [{"question": "Go on?", "header": "Next", "multiSelect": false,
                    "options": [{"label": "yes", "description": "Yes"}, {"label": "no", "description": "No"}]}]}}},
                  {"text": "Never said."}
                ]}
                """#, in: directory)
        defer { model.stop() }
        let serve = try await Self.serve()
        defer { serve.tearDown(part: "claude-auto-interrupt") }
        try await serve.start()
        let id = try await Self.start(serve, model, prompt: "Write auto.txt, then ask", approvals: "auto")
        let question = try await AgentsThatAskTests.pending(serve, id, kind: "question", within: 90)
        #expect(question["question"] == "Go on?")
        #expect(FileManager.default.fileExists(atPath: Self.workspace(serve, id).appendingPathComponent("auto.txt").path))
        #expect(try await serve.events(id).filter { $0["type"] == "input.requested" }.count == 1, "the shell call asked under approvals auto")

        #expect(try await serve.request("POST", "/v1/sessions/\(id)/interrupt")["interrupted"] == true)
        let ended = try await serve.waitForEnd(id, within: 60)
        #expect(ended["latestExecution"]?["status"] == "interrupted", "\(ended.text)")
        #expect(ended["pendingInput"] == 0)
        let resolved = try await serve.events(id).filter { $0["type"] == "input.resolved" }
        #expect(resolved.map { $0["data"]?["decision"] } == ["cancelled"])
        #expect(resolved.map { $0["data"]?["by"] } == ["interrupt"])
    }
}
