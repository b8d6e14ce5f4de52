import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The real Claude Code and Codex CLIs ask through their own protocols (Claude Code's
/// `can_use_tool` on stdio, Codex's app server), through a
/// real `serve` under the sandbox `auto` picks, offline against the scripted model server: its
/// shell calls wait for an allow or a deny, its question tool asks a question whose answer
/// reaches the model, a wait survives a kill -9 of `serve`, outlasts the idle timeout, times out,
/// and an interrupt cancels it.
@Suite("Real agents that ask (Claude Code's and Codex's own permission requests and questions)", .processes, .long)
struct RealAgentsThatAskTests {
    static let claude = RealAgentScenarioTests.claude
    static let available = RealAgentScenarioTests.available

    static var enabled: Bool { RealAgentScenarioTests.enabled(claude) }

    static func serve(_ agent: RealAgentScenarioTests.RealAgent, extra: [String: String] = [:]) async throws -> ServeUnderTest {
        try await ServeUnderTest(
            store: .sqlite, extra: [agent.variable: agent.binary ?? "", "CLOUD_AGENT_STALE_THRESHOLD": "20s"].merging(extra) { $1 })
    }

    /// The agent's own tool that asks the user a question, as a scripted model turn.
    static func questionTurn(_ agent: RealAgentScenarioTests.RealAgent, id: String, header: String, question: String, options: [String]) -> String {
        let choices = options.map { #"{"label": "\#($0)", "description": "\#($0)"}"# }.joined(separator: ", ")
        return agent.name == "claude-code"
            ? #"{"tool": {"name": "AskUserQuestion", "input": {"questions": [{"question": "\#(question)", "header": "\#(header)", "multiSelect": false, "options": [\#(choices)]}]}}}"#
            : #"{"tool": {"name": "request_user_input", "input": {"questions": [{"id": "\#(id)", "header": "\#(header)", "question": "\#(question)", "options": [\#(choices)]}]}}}"#
    }

    /// The agent's shell tool, as its permission requests name it.
    static func shellTool(_ agent: RealAgentScenarioTests.RealAgent) -> String { agent.name == "claude-code" ? "Bash" : "shell" }

    /// A session of `agent` pointed at `model`, initiated; its id.
    static func start(
        _ serve: ServeUnderTest, _ agent: RealAgentScenarioTests.RealAgent, _ model: ModelServer, prompt: String, approvals: String,
        idleTimeoutMs: Int? = nil
    ) async throws -> String {
        let settings = agent.settings(modelServer: model.url)
        var body: [String: JSONValue] = [
            "prompt": .string(prompt), "agent": .string(agent.name), "approvals": .string(approvals), "envVars": settings.envVars,
            "secrets": settings.secrets,
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
        "approvals ask: a denied shell call does not run and the agent goes on; the request outlives a kill -9 of serve; an allowed one runs; the question's answer reaches the model",
        .enabled(if: !available.isEmpty, RealAgentScenarioTests.skipReason), arguments: available)
    func denyRestartAllowAnswer(agent: RealAgentScenarioTests.RealAgent) async throws {
        try #require(RealAgentScenarioTests.enabled(agent), RealAgentScenarioTests.skipReason)
        let directory = try TemporaryDirectory()
        let questionTurn = Self.questionTurn(agent, id: "colour", header: "Colour", question: "Which colour?", options: ["red", "blue"])
        let model = try await ModelServer.start(
            script: #"""
                {"turns": [
                  {"text": "First the risky one.", "shell": "echo no > denied.txt", "description": "Write denied.txt"},
                  {"shell": "echo yes > allowed.txt", "description": "Write allowed.txt"},
                  \#(questionTurn),
                  {"text": "All done."}
                ]}
                """#, in: directory)
        defer { model.stop() }
        let serve = try await Self.serve(agent)
        defer { serve.tearDown(part: "\(agent.name)-ask") }
        try await serve.start()
        let id = try await Self.start(serve, agent, model, prompt: "Write the files", approvals: "ask")

        let denied = try await AgentsThatAskTests.pending(serve, id, kind: "permission", within: 90)
        #expect(denied["tool"]?.stringValue == Self.shellTool(agent))
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
        let denial = agent.name == "claude-code" ? "denied this tool call" : "rejected by user"
        #expect(main.contains { $0.messages.contains(denial) }, "the denial never reached the model")
        #expect(try #require(main.last).messages.contains("blue"), "the answer never reached the model")
    }

    @Test(
        "approvals ask: a shell call nobody answers outlasts the idle timeout, is denied at the input timeout, and the agent goes on",
        .enabled(if: !available.isEmpty, RealAgentScenarioTests.skipReason), arguments: available)
    func unansweredTimesOut(agent: RealAgentScenarioTests.RealAgent) async throws {
        try #require(RealAgentScenarioTests.enabled(agent), RealAgentScenarioTests.skipReason)
        let directory = try TemporaryDirectory()
        let model = try await ModelServer.start(
            script: #"{"turns": [{"shell": "echo late > late.txt", "description": "Write late.txt"}, {"text": "Nobody answered."}]}"#, in: directory)
        defer { model.stop() }
        let serve = try await Self.serve(agent, extra: ["CLOUD_AGENT_INPUT_TIMEOUT": "4s"])
        defer { serve.tearDown(part: "\(agent.name)-timeout") }
        try await serve.start()
        let id = try await Self.start(serve, agent, model, prompt: "Write late.txt", approvals: "ask", idleTimeoutMs: 1000)
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
        "approvals auto: shell calls run without asking, the agent's question is still forwarded, and an interrupt while it waits cancels it",
        .enabled(if: !available.isEmpty, RealAgentScenarioTests.skipReason), arguments: available)
    func autoQuestionInterrupted(agent: RealAgentScenarioTests.RealAgent) async throws {
        try #require(RealAgentScenarioTests.enabled(agent), RealAgentScenarioTests.skipReason)
        let directory = try TemporaryDirectory()
        let questionTurn = Self.questionTurn(agent, id: "next", header: "Next", question: "Go on?", options: ["yes", "no"])
        let model = try await ModelServer.start(
            script: #"""
                {"turns": [
                  {"shell": "echo auto > auto.txt", "description": "Write auto.txt"},
                  \#(questionTurn),
                  {"text": "Never said."}
                ]}
                """#, in: directory)
        defer { model.stop() }
        let serve = try await Self.serve(agent)
        defer { serve.tearDown(part: "\(agent.name)-auto-interrupt") }
        try await serve.start()
        let id = try await Self.start(serve, agent, model, prompt: "Write auto.txt, then ask", approvals: "auto")
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
