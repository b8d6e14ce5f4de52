import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import HTTPTypes
import HummingbirdTesting
@testable import CloudAgentEngine
@testable import CloudAgentServer
import Testing

/// ACP agents through the real server and runtime: the built-in OpenCode and Kilo (driven with
/// `acp`), and an agents file's `"protocol": "acp"` entry, all played by a fixture agent that
/// speaks the protocol (Tests/Fixtures/agents/acp-fixture: prompts are commands such as
/// `say`, `write`, `run`, `recall`, `fail`, `crash`).
@Suite("ACP agents (fixture) end to end", .processes)
struct ACPAgentScenarioTests {
    static let fixture = TestServer.fixtures.appendingPathComponent("agents/acp-fixture").path

    func server(idleTimeoutMs: Int64 = 60_000, stopGraceMs: Int64 = 1000) throws -> TestServer {
        var server = try TestServer(
            timing: Timing(
                idleTimeoutMs: idleTimeoutMs, heartbeatIntervalMs: 200, staleThresholdMs: 5000, stopGraceMs: stopGraceMs
            ))
        server.agentBinaries = ["CLOUD_AGENT_OPENCODE_BIN": Self.fixture, "CLOUD_AGENT_KILO_BIN": Self.fixture]
        let agentsFile = server.directory.url.appendingPathComponent("agents.json")
        try Data(
            #"""
            {"agents": [
              {"name": "fixture-acp", "command": ["\#(Self.fixture)", "acp"], "protocol": "acp", "timeout": "1500ms"}
            ]}
            """#.utf8
        ).write(to: agentsFile)
        server.agentsFile = agentsFile.path
        return server
    }

    /// `kind text-or-name-or-message` of each agent event of one execution. Consecutive texts are
    /// one message (a loaded machine may pause the runtime long enough to flush one in two).
    func summary(_ api: TestAPI, _ id: SessionID, execution: String? = nil) async throws -> [String] {
        var lines: [String] = []
        var previousWasText = false
        for event in try await api.events(id) where event.type == "agent" && (execution == nil || event.executionId == execution) {
            let kind = event.data["kind"]?.stringValue ?? "?"
            let detail = event.data["text"]?.stringValue ?? event.data["message"]?.stringValue ?? event.data["name"]?.stringValue ?? ""
            let status = event.data["status"]?.stringValue.map { " [\($0)]" } ?? ""
            if kind == "text", previousWasText, let last = lines.popLast() {
                lines.append(last + detail)
            } else {
                lines.append("\(kind) \(detail)\(status)")
            }
            previousWasText = kind == "text"
        }
        return lines
    }

    func workspace(_ api: TestAPI, _ id: SessionID) -> URL {
        api.plane.configuration.dataDirectory.appendingPathComponent("workspaces/\(id.rawValue)")
    }

    @Test(
        "OpenCode over ACP: chunks joined into text, tool calls with their permission recorded, plan and thoughts as logs; the follow-up prompts the same agent process and session"
    )
    func openCodeTurnAndFollowUp() async throws {
        try await server().run { api in
            let agents = try await api.request(.get, "/v1/agents")["agents"]?.arrayValue ?? []
            #expect(agents.first { $0["name"] == "opencode" }?["kind"] == "opencode")
            #expect(agents.first { $0["name"] == "fixture-acp" }?["kind"] == "acp")
            #expect(agents.first { $0["name"] == "fixture-acp" }?["available"] == true)

            let id = try await api.createSession([
                "prompt": "say Hello from the fixture\nwrite note.txt from opencode\nrun cat note.txt\nplan read; write; test\nthink pondering\nsay all done",
                "agent": "opencode",
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let first = try await api.waitForExecution(id, status: "completed")
            let firstId = try #require(first["executionId"]?.stringValue)
            #expect(
                try await summary(api, id) == [
                    "text Hello from the fixture",
                    "tool write note.txt [running]", "log permission allowed once (approvals auto): write note.txt", "tool write note.txt [completed]",
                    "tool cat note.txt [running]", "log permission allowed once (approvals auto): cat note.txt",
                    "tool cat note.txt [running]", "tool cat note.txt [completed]",
                    "log plan:\n[ ] read\n[ ] write\n[ ] test", "log pondering", "text all done",
                ])
            let events = try await api.events(id)
            let tool = try #require(events.last { $0.data["kind"] == "tool" })
            #expect(tool.data["output"] == "from opencode\n")
            #expect(tool.data["exitCode"] == 0)
            #expect(tool.data["input"] == "cat note.txt")
            let permission = try #require(events.first { $0.data["permission"] != nil }?.data["permission"])
            #expect(permission["decision"] == "allow" && permission["optionId"] == "once" && permission["approvals"] == "auto")
            #expect(events.filter { $0.type == "agent" }.allSatisfy { $0.data["raw"]?.stringValue?.hasPrefix("{") == true })
            #expect(try String(contentsOf: workspace(api, id).appendingPathComponent("note.txt"), encoding: .utf8) == "from opencode\n")
            let conversation = try #require(try await api.request(.get, "/v1/sessions/\(id)")["agentConversationId"]?.stringValue)
            #expect(conversation.hasPrefix("ses_"))
            let argv = events.filter { $0.type == "output" && $0.data["line"]?.stringValue?.hasPrefix("argv:") == true }
            #expect(argv.count == 1 && argv.first?.data["line"]?.stringValue?.contains(#""acp"]"#) == true)

            // The same runtime: the same process (no second argv) and the same ACP session.
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "recall"]).status == 202)
            let second = try await api.waitForExecution(id, status: "completed")
            let secondId = try #require(second["executionId"]?.stringValue)
            #expect(secondId != firstId)
            #expect(
                try await summary(api, id, execution: secondId) == [
                    "text recall: "
                        + "say Hello from the fixture\nwrite note.txt from opencode\nrun cat note.txt\nplan read; write; test\nthink pondering\nsay all done"
                ])
            #expect(try await api.events(id).filter { $0.data["line"]?.stringValue?.hasPrefix("argv:") == true }.count == 1)
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["agentConversationId"]?.stringValue == conversation)
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["runtime"]?["state"] == "running")
        }
    }

    @Test(
        "after an idle stop the follow-up cold-starts the agent and loads its session (history not replayed as events); an agent that cannot load gets a new session, said in an event"
    )
    func resumeAcrossColdStart() async throws {
        try await server(idleTimeoutMs: 1500).run { api in
            let id = try await api.createSession(["prompt": "say first turn", "agent": "kilo"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed")
            let conversation = try #require(try await api.request(.get, "/v1/sessions/\(id)")["agentConversationId"]?.stringValue)
            // This session's agent (other tests run the same fixture at the same time).
            let agent = Self.fixture + " acp"
            #expect(sessionProcesses(id.rawValue, commandContaining: agent).isEmpty == false, "the agent waits for the next prompt")
            _ = try await api.waitForRuntime(id, state: "stopped", within: 15)
            // The agent lived as long as its runtime, and no longer.
            try await eventually(within: 10, "the stopped runtime's agent to be gone") { sessionProcesses(id.rawValue, commandContaining: agent).isEmpty }
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "recall"]).status == 202)
            let second = try await api.waitForExecution(id, status: "completed")
            let secondId = try #require(second["executionId"]?.stringValue)
            #expect(
                try await summary(api, id, execution: secondId) == ["log ACP session \(conversation) resumed (session/load)", "text recall: say first turn"])
            #expect(try await api.events(id).filter { $0.data["line"]?.stringValue?.hasPrefix("argv:") == true }.count == 2)
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["agentConversationId"]?.stringValue == conversation)

            // The same agent without session/load: a new ACP session, and an event saying why.
            let other = try await api.createSession(["prompt": "say once", "agent": "kilo", "envVars": ["ACP_FIXTURE_NO_LOAD": "1"]])
            #expect(try await api.request(.post, "/v1/sessions/\(other)/initiate").status == 202)
            try await api.waitForExecution(other, status: "completed")
            let before = try #require(try await api.request(.get, "/v1/sessions/\(other)")["agentConversationId"]?.stringValue)
            _ = try await api.waitForRuntime(other, state: "stopped", within: 15)
            #expect(try await api.request(.post, "/v1/sessions/\(other)/messages", json: ["prompt": "recall"]).status == 202)
            let again = try await api.waitForExecution(other, status: "completed")
            let after = try #require(try await api.request(.get, "/v1/sessions/\(other)")["agentConversationId"]?.stringValue)
            #expect(after != before)
            let lines = try await summary(api, other, execution: again["executionId"]?.stringValue)
            #expect(
                lines == [
                    "log a new ACP session \(after): the earlier one (\(before)) could not be resumed: the agent offers neither session/load nor session/resume",
                    "text recall: nothing",
                ])
        }
    }

    @Test("the prompt's outcome: a JSON-RPC error fails the execution with the agent's message; refusal and max_tokens fail it, naming the stop reason")
    func outcomes() async throws {
        try await server().run { api in
            let id = try await api.createSession(["prompt": "say working\nfail rate limited by the provider", "agent": "kilo"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let failed = try await api.waitForExecution(id, status: "failed")
            let error = failed["error"]?.stringValue ?? ""
            #expect(error.contains("rate limited by the provider"), "\(error)")
            let events = try await api.events(id)
            #expect(events.contains { $0.type == "agent" && $0.data["kind"] == "error" && $0.data["message"]?.stringValue == error })
            #expect(events.contains { $0.type == "execution.failed" && $0.data["error"]?.stringValue == error })

            // The agent lives on: the next prompts go to the same process.
            for (reason, phrase) in [("refusal", "refused"), ("max_tokens", "output limit")] {
                #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": .string("stop \(reason)")]).status == 202)
                try await eventually(within: 15, "the \(reason) turn to fail") {
                    let latest = try await api.request(.get, "/v1/sessions/\(id)")["latestExecution"]
                    return latest?["status"] == "failed" && latest?["error"]?.stringValue?.contains(phrase) == true
                }
            }
            #expect(try await api.events(id).filter { $0.data["line"]?.stringValue?.hasPrefix("argv:") == true }.count == 1)
        }
    }

    @Test("usage over ACP: the prompt answer's tokens and the cost the session's usage_updates added in this turn only, summed on the session")
    func usageOverACP() async throws {
        try await server().run { api in
            let id = try await api.createSession(["prompt": "usage 1000 50 0.25\nsay one\nusage 200 10 0.5", "agent": "fixture-acp"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let first = try await api.waitForExecution(id, status: "completed")
            #expect(first["usage"]?["inputTokens"] == 1200 && first["usage"]?["outputTokens"] == 60, "\(first["usage"] ?? .null)")
            #expect(first["usage"]?["costUsd"]?.doubleValue == 0.75)
            // The agent's cost is the session's so far: the next turn counts only what it added.
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "usage 10 1 0.125"]).status == 202)
            try await eventually(within: 15, "the second turn") {
                let view = try await api.request(.get, "/v1/sessions/\(id)")
                return view["executionCount"] == 2 && view["latestExecution"]?["status"] == "completed"
            }
            let view = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(view["latestExecution"]?["usage"]?["costUsd"]?.doubleValue == 0.125)
            #expect(view["latestExecution"]?["usage"]?["inputTokens"] == 10)
            #expect(view["usage"]?["costUsd"]?.doubleValue == 0.875 && view["usage"]?["inputTokens"] == 1210)
        }
    }

    @Test("interrupt: session/cancel stops the turn and the tool's process; the agent stays for the next prompt")
    func interruptCancels() async throws {
        try await server().run { api in
            let seconds = "61.\(Int.random(in: 100_000...999_999))"
            let pattern = "'[s]leep \(seconds)'"
            let id = try await api.createSession(["prompt": .string("run sleep \(seconds)"), "agent": "kilo"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await eventually(within: 15, "the tool's process") { try await shell("pgrep -f \(pattern) || true").isEmpty == false }
            #expect(try await api.request(.post, "/v1/sessions/\(id)/interrupt")["interrupted"] == true)
            let ended = try await api.waitForExecution(id, status: "interrupted")
            #expect(ended["interruptReason"] == "user")
            try await eventually(within: 10, "the tool's process to be gone") { try await shell("pgrep -f \(pattern) || true").isEmpty }
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "recall"]).status == 202)
            let next = try await api.waitForExecution(id, status: "completed")
            #expect(try await summary(api, id, execution: next["executionId"]?.stringValue) == ["text recall: run sleep \(seconds)"])
            #expect(try await api.events(id).filter { $0.data["line"]?.stringValue?.hasPrefix("argv:") == true }.count == 1)
        }
    }

    @Test("interrupt of an agent that ignores session/cancel: it is signalled after the grace; the next prompt starts a new process that loads the session")
    func interruptDeafAgent() async throws {
        try await server(stopGraceMs: 1000).run { api in
            let id = try await api.createSession(["prompt": "say listening\ndeaf 60", "agent": "opencode"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await eventually(within: 15, "the first words") {
                try await api.events(id).compactMap { $0.data["text"]?.stringValue }.joined() == "listening"
            }
            let asked = ContinuousClock.now
            #expect(try await api.request(.post, "/v1/sessions/\(id)/interrupt")["interrupted"] == true)
            let ended = try await api.waitForExecution(id, status: "interrupted")
            #expect(ended["interruptReason"] == "user")
            #expect(ContinuousClock.now - asked < .seconds(8))
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say back"]).status == 202)
            let next = try await api.waitForExecution(id, status: "completed")
            #expect(try await summary(api, id, execution: next["executionId"]?.stringValue).last == "text back")
            #expect(try await api.events(id).filter { $0.data["line"]?.stringValue?.hasPrefix("argv:") == true }.count == 2)
        }
    }

    @Test(
        "a hostile or broken agent: malformed lines are output, an overlong message is dropped with an error event, the client's unserved methods are method-not-found, its capabilities are stated honestly"
    )
    func hostileAgent() async throws {
        try await server().run { api in
            let id = try await api.createSession([
                "prompt":
                    "garbage\nhuge 5000000\nnoise 3000000\nbigtool 2000000\nsay still here\nask-client x/unknown\nask-client fs/read_text_file\nask-client terminal/create\ncapabilities",
                "agent": "fixture-acp",
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed", within: 30)
            let events = try await api.events(id)
            #expect(events.contains { $0.type == "output" && $0.data["stream"] == "stdout" && $0.data["line"] == "{this is not json" })
            let texts = events.filter { $0.data["kind"] == "text" }.compactMap { $0.data["text"]?.stringValue }
            // One message, or several where the agent paused (the fixture's texts have no newlines).
            let expected: [String] = [
                "still here", "client answered x/unknown: error -32601", "client answered fs/read_text_file: error -32601",
                "client answered terminal/create: error -32601",
                #"capabilities: {"elicitation":{"form":{}},"fs":{"readTextFile":false,"writeTextFile":false},"terminal":false}"#,
            ]
            #expect(texts.joined() == expected.joined())
            let errors = events.filter { $0.data["kind"] == "error" }.compactMap { $0.data["message"]?.stringValue }
            #expect(errors.count == 1 && errors.first?.contains("over the limit") == true, "\(errors)")
            // Oversized events are cut to fit a frame, never sent whole (the control plane would
            // refuse the frame, and the runtime resend it after every reconnect).
            let noise = try #require(events.first { $0.type == "output" && $0.data["line"]?.stringValue?.hasPrefix("nnn") == true })
            #expect(noise.data["truncated"] == true && (noise.data["line"]?.stringValue?.count ?? 0) < 10_000)
            let tool = try #require(events.first { $0.data["kind"] == "tool" })
            #expect(tool.data["truncated"] == true && (tool.data["name"]?.stringValue?.count ?? 0) < 10_000)
            let plan = try #require(events.first { $0.data["plan"] != nil })
            #expect(plan.data["truncated"] == true && (plan.data["plan"]?.arrayValue?.count ?? 0) <= 64)
        }
    }

    @Test("an agent that exits mid-prompt fails the execution naming it; an agent that never answers initialize fails it after the timeout")
    func brokenAgents() async throws {
        try await server().run { api in
            let id = try await api.createSession(["prompt": "say about to go\ncrash 3", "agent": "fixture-acp"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let crashed = try await api.waitForExecution(id, status: "failed")
            #expect(crashed["error"] == "the agent exited during session/prompt (exit code 3)")
            #expect(crashed["exitCode"] == 3)
            // The runtime starts the agent anew for the next prompt, and loads the session.
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say recovered"]).status == 202)
            let recovered = try await api.waitForExecution(id, status: "completed")
            #expect(try await summary(api, id, execution: recovered["executionId"]?.stringValue).last == "text recovered")

            let silent = try await api.createSession(["prompt": "say never", "agent": "fixture-acp", "envVars": ["ACP_FIXTURE_SILENT_INITIALIZE": "1"]])
            #expect(try await api.request(.post, "/v1/sessions/\(silent)/initiate").status == 202)
            let timedOut = try await api.waitForExecution(silent, status: "failed")
            #expect(timedOut["error"] == "the agent did not answer initialize within 1500 ms (ACP)")
        }
    }

    @Test("the CLI runs an agents file's ACP agent like any other: its text, its tool call, the outcome")
    func throughTheCLI() async throws {
        let server = try server()
        try await server.run { api in
            let cli = CLIRunner(port: try #require(api.client.port), directory: server.directory.url)
            let run = try await cli.run(["run"], ["--agent", "fixture-acp", "say hi over acp\nrun echo from-the-tool"], environment: ["NO_COLOR": "1"])
            #expect(run.exitStatus == 0, "\(run.diagnostics)")
            let lines = run.stdout.split(separator: "\n").map(String.init)
            #expect(lines.contains("hi over acp"), "\(run.stdout)")
            #expect(lines.contains { $0.hasPrefix("⏺ echo from-the-tool: echo from-the-tool → exit 0") }, "\(run.stdout)")
            #expect(lines.contains { $0.contains("permission allowed once") }, "\(run.stdout)")
            #expect(lines.contains { $0.hasPrefix("✓ execution completed") }, "\(run.stdout)")
            let failed = try await cli.run(["run"], ["--agent", "fixture-acp", "fail the model is down"], environment: ["NO_COLOR": "1"])
            #expect(failed.exitStatus == 1, "\(failed.diagnostics)")
            #expect(failed.stderr.contains("the model is down"), "\(failed.diagnostics)")
        }
    }

    @Test("a read-only mode switches the agent to its plan mode and rejects its permission requests; the next execution is back in the agent's own mode")
    func readOnlyMode() async throws {
        try await server().run { api in
            let id = try await api.createSession(["prompt": "write blocked.txt nope", "agent": "opencode", "mode": "ask"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed")
            #expect(
                try await summary(api, id) == [
                    "tool write blocked.txt [running]", "log permission rejected: the execution is read-only (approvals auto): write blocked.txt",
                    "tool write blocked.txt [failed]", "text denied: write blocked.txt",
                ])
            #expect(!FileManager.default.fileExists(atPath: workspace(api, id).appendingPathComponent("blocked.txt").path))
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "write allowed.txt yes", "mode": "code"]).status == 202)
            try await api.waitForExecution(id, status: "completed")
            #expect(try String(contentsOf: workspace(api, id).appendingPathComponent("allowed.txt"), encoding: .utf8) == "yes\n")
        }
    }

    @Test(
        "approvals ask: the fixture's permission requests carry its options; a deny picks its reject option and the tool does not run, an allow its allow option, and one left unanswered is rejected at the input timeout"
    )
    func fixtureAsks() async throws {
        var server = try server()
        server.timing.inputTimeoutMs = 1500
        try await server.run { api in
            let id = try await api.createSession([
                "prompt": "write denied.txt no\nwrite allowed.txt yes\nwrite late.txt late\nsay end", "agent": "fixture-acp", "approvals": "ask",
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let first = try await api.pendingInput(id)
            #expect(first["options"]?.arrayValue?.compactMap { $0["kind"]?.stringValue } == ["allow_always", "allow_once", "reject_once"])
            let denied = try await api.answerInput(id, first, ["decision": "deny"])
            #expect(denied["resolution"]?["optionId"] == "reject")
            let second = try await api.pendingInput(id)
            let allowed = try await api.answerInput(id, second, ["decision": "allow"])
            #expect(allowed["resolution"]?["optionId"] == "once")
            try await api.waitForExecution(id, status: "completed")
            let resolved = try await api.events(id).filter { $0.type == "input.resolved" }
            #expect(resolved.compactMap { $0.data["decision"]?.stringValue } == ["deny", "allow", "timeout"])
            #expect(resolved.last?.data["optionId"] == "reject")
            #expect(!FileManager.default.fileExists(atPath: workspace(api, id).appendingPathComponent("denied.txt").path))
            #expect(try String(contentsOf: workspace(api, id).appendingPathComponent("allowed.txt"), encoding: .utf8) == "yes\n")
            #expect(!FileManager.default.fileExists(atPath: workspace(api, id).appendingPathComponent("late.txt").path))
            // The agent went on after each refusal (consecutive texts are one line of the summary).
            #expect(try await summary(api, id).last?.hasSuffix("end") == true)
        }
    }

    @Test(
        "elicitation/create (form mode) is a question whatever the approvals: a text fills the one field, an object the fields with their types, a deny declines; the client says it takes forms"
    )
    func elicitationIsAQuestion() async throws {
        try await server().run { api in
            let form =
                #"{"mode":"form","message":"Which branch?","requestedSchema":{"type":"object","properties":{"branch":{"type":"string","enum":["main","dev"]}},"required":["branch"]}}"#
            let typed =
                #"{"mode":"form","message":"How many?","requestedSchema":{"type":"object","properties":{"count":{"type":"integer"},"sure":{"type":"boolean"}}}}"#
            let skipped = #"{"mode":"form","message":"Skip me","requestedSchema":{"type":"object","properties":{"x":{"type":"string"}}}}"#
            let id = try await api.createSession([
                "prompt": .string(
                    "capabilities\nask-client elicitation/create \(form)\nask-client elicitation/create \(typed)\nask-client elicitation/create \(skipped)"),
                "agent": "fixture-acp",
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            func answer(_ request: JSONValue, _ body: JSONValue) async throws {
                let answered = try await api.answerInput(id, request, body)
                #expect(answered.status == 200, "\(answered.text)")
            }
            let branch = try await api.pendingInput(id)
            #expect(branch["kind"] == "question")
            #expect(branch["question"] == "Which branch?")
            #expect(branch["choices"] == ["main", "dev"])
            try await answer(branch, ["answer": "dev"])
            let count = try await api.pendingInput(id)
            #expect(count["question"] == "How many?")
            try await answer(count, ["answer": ["count": "3", "sure": "true"]])
            try await answer(try await api.pendingInput(id), ["decision": "deny"])
            try await api.waitForExecution(id, status: "completed")
            // Consecutive texts are one message in the summary: the answers follow each other in it.
            let text = try await summary(api, id).filter { $0.hasPrefix("text ") }.joined()
            #expect(text.contains(#""elicitation":{"form":{}}"#), "capabilities: \(text)")
            let answers = [
                #"client answered elicitation/create: result {"action":"accept","content":{"branch":"dev"}}"#,
                #"client answered elicitation/create: result {"action":"accept","content":{"count":3,"sure":true}}"#,
                #"client answered elicitation/create: result {"action":"decline"}"#,
            ]
            #expect(text.hasSuffix(answers.joined()), "\(text)")
        }
    }

    @Test(
        "mcpServers: refused naming the field for an agent that takes none and for a secret the session lacks; an ACP agent gets its stdio servers with the secret resolved, HTTP ones only when it takes them; PATCH replaces them"
    )
    func mcpServersOverACP() async throws {
        try await server().run { api in
            let servers: JSONValue = [
                "notes": ["command": "/usr/bin/notes-mcp", "args": ["--fast"], "env": ["NOTES_TOKEN": ["secret": "NOTES_TOKEN"], "MODE": "quick"]],
                "docs": ["url": "https://mcp.example.com/mcp", "headers": ["Authorization": ["secret": "NOTES_TOKEN"]]],
            ]
            let before = try await api.request(.get, "/v1/sessions")["sessions"]?.arrayValue?.count
            let refusals: [(JSONValue, String, String)] = [
                (["prompt": "say hi", "mcpServers": servers, "secrets": ["NOTES_TOKEN": "s3cret-value"]], "mcpServers", "cannot take MCP servers"),
                (["prompt": "mcp", "agent": "fixture-acp", "mcpServers": servers], "mcpServers.docs", "NOTES_TOKEN"),
                (["prompt": "mcp", "agent": "fixture-acp", "mcpServers": ["bad name": ["command": "x"]]], "mcpServers", "[A-Za-z0-9_-]"),
            ]
            for (body, field, words) in refusals {
                let refused = try await api.request(.post, "/v1/sessions", json: body)
                #expect(refused.status == 400, "\(body): \(refused.text)")
                #expect(refused["error"]?["field"]?.stringValue == field, "\(refused.text)")
                #expect(refused["error"]?["message"]?.stringValue?.contains(words) == true, "\(refused.text)")
            }
            #expect(try await api.request(.get, "/v1/sessions")["sessions"]?.arrayValue?.count == before, "a refused body created a session")

            let secret = "s3cret-value"
            let id = try await api.createSession(["prompt": "mcp", "agent": "fixture-acp", "mcpServers": servers, "secrets": ["NOTES_TOKEN": .string(secret)]])
            let view = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(view["mcpServers"] == servers, "the view shows the servers as given, secrets by name")
            #expect(!view.text.contains(secret))
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let execution = try await api.waitForExecution(id, status: "completed")
            let events = try await api.events(id).filter { $0.type == "agent" && $0.executionId == execution["executionId"]?.stringValue }
            let texts = events.compactMap { $0.data["text"]?.stringValue }.joined()
            #expect(
                texts
                    == #"mcp: [{"args":["--fast"],"command":"/usr/bin/notes-mcp","env":[{"name":"MODE","value":"<5 chars>"},{"name":"NOTES_TOKEN","value":"<12 chars>"}],"name":"notes"}]"#,
                "texts: \(texts)")
            #expect(
                events.contains {
                    $0.data["message"]?.stringValue?.contains("MCP servers left out") == true && $0.data["message"]?.stringValue?.contains("docs") == true
                })

            // An agent that takes HTTP servers gets them; a PATCH replaces the set (a new runtime).
            let http = try await api.createSession([
                "prompt": "mcp", "agent": "fixture-acp", "envVars": ["ACP_FIXTURE_MCP_HTTP": "1"], "secrets": ["NOTES_TOKEN": .string(secret)],
                "mcpServers": ["docs": servers["docs"]!],
            ])
            #expect(try await api.request(.post, "/v1/sessions/\(http)/initiate").status == 202)
            _ = try await api.waitForExecution(http, status: "completed")
            let httpTexts = try await api.events(http).filter { $0.type == "agent" }.compactMap { $0.data["text"]?.stringValue }.joined()
            #expect(
                httpTexts
                    == #"mcp: [{"headers":[{"name":"Authorization","value":"<12 chars>"}],"name":"docs","type":"http","url":"https://mcp.example.com/mcp"}]"#,
                "texts: \(httpTexts)")

            // Before initiate, a PATCH replaces the set; one that would orphan a secret or move to
            // an agent that takes no servers is refused and changes nothing.
            let draft = try await api.createSession([
                "prompt": "mcp", "agent": "fixture-acp", "mcpServers": servers, "secrets": ["NOTES_TOKEN": .string(secret)],
            ])
            let lostSecret = try await api.request(.patch, "/v1/sessions/\(draft)", json: ["secrets": nil])
            #expect(lostSecret.status == 400, "\(lostSecret.text)")
            #expect(lostSecret["error"]?["field"] == "mcpServers.docs")
            let noAgent = try await api.request(.patch, "/v1/sessions/\(draft)", json: ["agent": "scripted"])
            #expect(noAgent.status == 400)
            #expect(noAgent["error"]?["field"] == "mcpServers")
            #expect(try await api.request(.get, "/v1/sessions/\(draft)")["mcpServers"] == servers, "a refused PATCH changed the session")
            let patched = try await api.request(.patch, "/v1/sessions/\(draft)", json: ["mcpServers": ["solo": ["command": "solo-mcp"]], "secrets": nil])
            #expect(patched.status == 200, "\(patched.text)")
            #expect(patched["mcpServers"] == ["solo": ["command": "solo-mcp"]])
            #expect(try await api.request(.patch, "/v1/sessions/\(draft)", json: ["mcpServers": nil])["mcpServers"] == [:])
        }
    }
}

@Suite("Agent support directories for the sandbox")
struct AgentSupportDirectoryTests {
    @Test("a program in a Python venv brings its venv and the installation the venv was made from; a #! interpreter its prefix; #!/usr/bin/env nothing more")
    func venvAndShebang() throws {
        let directory = try TemporaryDirectory()
        let root = directory.url.appendingPathComponent("venv")
        let base = directory.url.appendingPathComponent("pythons/3.11")
        try FileManager.default.createDirectory(at: root.appendingPathComponent("bin"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: base.appendingPathComponent("bin"), withIntermediateDirectories: true)
        try "home = \(base.path)/bin\nversion = 3.11.7\n".write(to: root.appendingPathComponent("pyvenv.cfg"), atomically: true, encoding: .utf8)
        let program = root.appendingPathComponent("bin/agent-acp")
        try "#!\(root.path)/bin/python3\nimport sys\n".write(to: program, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(
            atPath: root.appendingPathComponent("bin/python3").path, withDestinationPath: base.appendingPathComponent("bin/python3").path)
        #expect(Set(AgentRegistry.supportDirectories(of: program.path)) == [root.appendingPathComponent("bin").path, root.path, base.path])

        let script = directory.url.appendingPathComponent("tools/run.sh")
        try FileManager.default.createDirectory(at: script.deletingLastPathComponent(), withIntermediateDirectories: true)
        try "#!/opt/shells/bin/zsh -e\n".write(to: script, atomically: true, encoding: .utf8)
        #expect(AgentRegistry.supportDirectories(of: script.path) == [script.deletingLastPathComponent().path, "/opt/shells"])
        try "#!/usr/bin/env python3\n".write(to: script, atomically: true, encoding: .utf8)
        #expect(AgentRegistry.supportDirectories(of: script.path) == [script.deletingLastPathComponent().path])
    }
}
