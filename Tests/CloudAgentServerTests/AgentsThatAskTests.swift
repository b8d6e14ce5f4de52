import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Agents that ask: the scripted agent's `approve` and `ask` through a real `serve`, under the
/// sandbox `auto` picks (bwrap here), answered over the API, across a restart, on a timeout and
/// an interrupt.
@Suite("Agents that ask: permissions and questions reach the user, under the default sandbox", .processes)
struct AgentsThatAskTests {
    /// Creates a session with `approvals: ask` (unless told otherwise) and initiates it.
    static func start(_ serve: ServeUnderTest, _ prompt: String, approvals: String = "ask") async throws -> String {
        let created = try await serve.request("POST", "/v1/sessions", json: ["prompt": .string(prompt), "approvals": .string(approvals)])
        try #require(created.status == 201, "\(created.text)")
        #expect(created["approvals"]?.stringValue == approvals)
        let id = try #require(created["sessionId"]?.stringValue)
        let started = try await serve.request("POST", "/v1/sessions/\(id)/initiate")
        try #require(started.status == 202, "\(started.text)")
        return id
    }

    /// The session's one pending request, once there is one.
    static func pending(_ serve: ServeUnderTest, _ id: String, kind: String, within seconds: Double = 30) async throws -> JSONValue {
        try await eventuallyValue(within: seconds, "a pending \(kind) request") {
            let listed = try await serve.request("GET", "/v1/sessions/\(id)/input-requests")
            return listed["requests"]?.arrayValue?.first { $0["status"] == "pending" && $0["kind"]?.stringValue == kind }
        }
    }

    static func answer(_ serve: ServeUnderTest, _ id: String, _ requestId: String, _ body: JSONValue) async throws -> APIResponse {
        try await serve.request("POST", "/v1/sessions/\(id)/input-requests/\(requestId)", json: body)
    }

    static func texts(_ serve: ServeUnderTest, _ id: String) async throws -> [String] {
        try await serve.events(id).filter { $0["type"] == "agent" }.compactMap { $0["data"]?["text"]?.stringValue }
    }

    @Test("approve waits for an allow, then runs; ask gets the user's answer; a deny skips the command and the agent goes on; bad answers change nothing")
    func askAllowAnswerDeny() async throws {
        let serve = try await ServeUnderTest(store: .sqlite)
        defer { serve.tearDown(part: "ask-allow-answer-deny") }
        try await serve.start()
        let id = try await Self.start(serve, "say before\napprove touch approved.txt\nask Which color?\napprove touch denied.txt\nsay after")

        let permission = try await Self.pending(serve, id, kind: "permission")
        let requestId = try #require(permission["requestId"]?.stringValue)
        #expect(permission["tool"] == "run")
        #expect(permission["input"]?["command"] == "touch approved.txt")
        #expect(permission["options"]?.arrayValue?.compactMap { $0["kind"]?.stringValue } == ["allow_once", "allow_always", "reject_once"])
        #expect(permission["deadline"]?.stringValue != nil)
        let session = try await serve.request("GET", "/v1/sessions/\(id)")
        #expect(session["pendingInput"] == 1)
        #expect(session["latestExecution"]?["waitingForInput"]?.stringValue == requestId)
        #expect(session["latestExecution"]?["status"] == "running")
        #expect(try await serve.request("GET", "/metrics").text.contains("cloud_agent_input_pending 1.0"), "the pending gauge")

        // Bad answers: each a 400 naming its field, a 404 for an unknown request; nothing changes.
        let bad: [(JSONValue, String)] = [
            (["decision": "maybe"], "decision"), (["answer": "blue"], "answer"), (["decision": "allow", "optionId": "nope"], "optionId"),
            (["decision": "allow", "extra": true], "extra"), ("allow", "body"),
        ]
        for (body, field) in bad {
            let refused = try await Self.answer(serve, id, requestId, body)
            #expect(refused.status == 400, "\(body): \(refused.text)")
            #expect(refused["error"]?["field"]?.stringValue == field, "\(body): \(refused.text)")
        }
        #expect(try await Self.answer(serve, id, "req_unknown", ["decision": "allow"]).status == 404)
        #expect(try await serve.request("GET", "/v1/sessions/\(id)")["pendingInput"] == 1)

        let allowed = try await Self.answer(serve, id, requestId, ["decision": "allow"])
        #expect(allowed.status == 200, "\(allowed.text)")
        #expect(allowed["resolution"]?["decision"] == "allow")
        #expect(allowed["resolution"]?["by"] == "user")
        let again = try await Self.answer(serve, id, requestId, ["decision": "deny"])
        #expect(again.status == 409)
        #expect(again["error"]?["code"] == "INVALID_STATE")

        let question = try await Self.pending(serve, id, kind: "question")
        #expect(question["question"] == "Which color?")
        let answered = try await Self.answer(serve, id, try #require(question["requestId"]?.stringValue), ["answer": "blue"])
        #expect(answered.status == 200, "\(answered.text)")

        let second = try await Self.pending(serve, id, kind: "permission")
        #expect(second["input"]?["command"] == "touch denied.txt")
        #expect(try await Self.answer(serve, id, try #require(second["requestId"]?.stringValue), ["decision": "deny"]).status == 200)

        let ended = try await serve.waitForEnd(id)
        #expect(ended["latestExecution"]?["status"] == "completed", "\(ended.text)")
        #expect(ended["pendingInput"] == 0)
        #expect(ended["latestExecution"]?["waitingForInput"] == .null)
        #expect(try await Self.texts(serve, id) == ["before", "answer: blue", "denied: touch denied.txt", "after"])
        let events = try await serve.events(id)
        let tools = events.filter { $0["type"] == "agent" && $0["data"]?["kind"] == "tool" }
        #expect(tools.map { $0["data"]?["input"]?.stringValue } == ["touch approved.txt"])
        #expect(events.filter { $0["type"] == "input.requested" }.count == 3)
        #expect(events.filter { $0["type"] == "input.resolved" }.compactMap { $0["data"]?["decision"]?.stringValue } == ["allow", "answer", "deny"])
        let workspace = serve.directory.url.appendingPathComponent("data/workspaces/\(id)")
        #expect(FileManager.default.fileExists(atPath: workspace.appendingPathComponent("approved.txt").path))
        #expect(!FileManager.default.fileExists(atPath: workspace.appendingPathComponent("denied.txt").path))

        let metrics = try await serve.request("GET", "/metrics").text
        #expect(metrics.contains("cloud_agent_input_pending 0.0"), "the pending gauge")
        #expect(metrics.contains(#"cloud_agent_input_wait_seconds_count{by="user"} 3"#), "time to answer")
        let listed = try await serve.request("GET", "/v1/sessions/\(id)/input-requests")["requests"]?.arrayValue ?? []
        #expect(listed.count == 3)
        #expect(listed.allSatisfy { $0["status"] == "resolved" })
    }

    @Test("an always answer answers the same tool's later requests by rule; with approvals auto nothing waits and each decision is recorded")
    func alwaysAndAuto() async throws {
        let serve = try await ServeUnderTest(store: .sqlite)
        defer { serve.tearDown(part: "ask-always-auto") }
        try await serve.start()
        let id = try await Self.start(serve, "approve touch one.txt\napprove touch two.txt\nsay done")
        let first = try await Self.pending(serve, id, kind: "permission")
        let always = try await Self.answer(serve, id, try #require(first["requestId"]?.stringValue), ["decision": "allow", "always": true])
        #expect(always["resolution"]?["optionId"] == "allow-always")
        let ended = try await serve.waitForEnd(id)
        #expect(ended["latestExecution"]?["status"] == "completed", "\(ended.text)")
        let resolved = try await serve.events(id).filter { $0["type"] == "input.resolved" }.compactMap { $0["data"]?["by"]?.stringValue }
        #expect(resolved == ["user", "rule"])

        let auto = try await Self.start(serve, "approve touch auto.txt\nsay done", approvals: "auto")
        let done = try await serve.waitForEnd(auto)
        #expect(done["latestExecution"]?["status"] == "completed", "\(done.text)")
        let events = try await serve.events(auto)
        let asked = events.filter { $0["type"]?.stringValue?.hasPrefix("input.") == true }.count
        #expect(asked == 0)
        let logs = events.filter { $0["type"] == "agent" && $0["data"]?["kind"] == "log" }.compactMap { $0["data"]?["message"]?.stringValue }
        #expect(logs.contains { $0.contains("allowed automatically") && $0.contains("touch auto.txt") }, "\(logs)")
        #expect(events.contains { $0["data"]?["kind"] == "tool" && $0["data"]?["input"] == "touch auto.txt" })
    }

    @Test("unanswered, a request is denied at the input timeout and the agent goes on; an interrupt while waiting cancels it; waiting is never idle")
    func timeoutInterruptAndIdle() async throws {
        // An idle timeout far shorter than the wait: a waiting agent is busy, never idle.
        let serve = try await ServeUnderTest(store: .sqlite, extra: ["CLOUD_AGENT_INPUT_TIMEOUT": "4s", "CLOUD_AGENT_IDLE_TIMEOUT": "1s"])
        defer { serve.tearDown(part: "ask-timeout-interrupt") }
        try await serve.start()
        let id = try await Self.start(serve, "approve touch late.txt\nsay went on")
        let request = try await Self.pending(serve, id, kind: "permission")
        let ended = try await serve.waitForEnd(id, within: 30)
        #expect(ended["latestExecution"]?["status"] == "completed", "\(ended.text)")
        let resolved = try #require(try await serve.events(id).first { $0["type"] == "input.resolved" })
        #expect(resolved["data"]?["decision"] == "timeout")
        #expect(resolved["data"]?["by"] == "timeout")
        #expect(resolved["data"]?["requestId"] == request["requestId"])
        #expect(try await Self.texts(serve, id) == ["denied: touch late.txt", "went on"])
        let askedAt = try #require(try await serve.events(id).first { $0["type"] == "input.requested" }?["at"]?.stringValue.flatMap(Timestamp.parse))
        let deniedAt = try #require(resolved["at"]?.stringValue.flatMap(Timestamp.parse))
        let waited = deniedAt.timeIntervalSince(askedAt) * 1000
        #expect(waited >= 4000, "denied before the input timeout: \(waited) ms")
        Reliability.report(
            "ask-timeout",
            "input timeout 4 s, idle timeout 1 s, sandbox \(ended["sandbox"]?.stringValue ?? "?"): the unanswered permission was denied \(Int(waited)) ms after it was asked (\(Int(waited) - 4000) ms past the deadline); the runtime was not idle-stopped while the agent waited; the agent went on and completed"
        )
        // Waiting 4 s with an idle timeout of 1 s: the runtime was not stopped meanwhile.
        let stops = try await serve.events(id).filter { $0["type"] == "runtime.stopped" }
        let stoppedAfterEnd = try stops.allSatisfy { stop in
            try #require(stop["at"]?.stringValue) >= (try #require(ended["latestExecution"]?["completedAt"]?.stringValue))
        }
        #expect(stoppedAfterEnd, "a runtime stopped while its agent waited: \(stops)")

        let second = try await Self.start(serve, "ask Anyone there?\nsay never")
        let question = try await Self.pending(serve, second, kind: "question")
        let interrupted = try await serve.request("POST", "/v1/sessions/\(second)/interrupt")
        #expect(interrupted["interrupted"] == true)
        let end = try await serve.waitForEnd(second)
        #expect(end["latestExecution"]?["status"] == "interrupted", "\(end.text)")
        let cancelled = try await serve.events(second).first { $0["type"] == "input.resolved" }
        #expect(cancelled?["data"]?["decision"] == "cancelled")
        #expect(cancelled?["data"]?["by"] == "interrupt")
        #expect(cancelled?["data"]?["requestId"] == question["requestId"])
        #expect(!(try await Self.texts(serve, second)).contains("never"))
    }

    @Test(
        "serve restarted while the agent waits (kill -9 and SIGTERM): the request is still pending, answerable, and the same sandboxed agent goes on",
        arguments: [ServeStore.sqlite, .postgres]
    )
    func restartWhileWaiting(_ store: ServeStore) async throws {
        let serve = try await ServeUnderTest(store: store)
        defer { serve.tearDown(part: "ask-restart-\(store.rawValue)") }
        try await serve.start()
        let id = try await Self.start(serve, "ask Still there?\nask And now?\nsay done")
        let first = try await Self.pending(serve, id, kind: "question")
        let launched = try await serve.request("GET", "/v1/sessions/\(id)")["runtime"]?["startedAt"]?.stringValue

        let killedAt = ContinuousClock.now
        try await serve.stop(with: SIGKILL)
        try await serve.start()
        let down = ContinuousClock.now - killedAt
        let still = try await Self.pending(serve, id, kind: "question")
        #expect(still["requestId"] == first["requestId"])
        #expect(try await Self.answer(serve, id, try #require(first["requestId"]?.stringValue), ["answer": "yes"]).status == 200)

        let second = try await Self.pending(serve, id, kind: "question")
        #expect(second["question"] == "And now?")
        try await serve.stop(with: SIGTERM)
        try await serve.start()
        #expect(try await Self.answer(serve, id, try #require(second["requestId"]?.stringValue), ["answer": ["mood": "fine"]]).status == 200)

        let ended = try await serve.waitForEnd(id)
        #expect(ended["latestExecution"]?["status"] == "completed", "\(ended.text)\n\(serve.diagnostics)")
        #expect(ended["runtime"]?["startedAt"]?.stringValue == launched, "the same runtime, not a new one")
        #expect(try await Self.texts(serve, id) == ["answer: yes", #"answer: {"mood":"fine"}"#, "done"])
        Reliability.report(
            "ask-restart",
            "\(store.rawValue), sandbox \(ended["sandbox"]?.stringValue ?? "?"): serve killed (-9) while the agent waited for input (down \(down)), then stopped with SIGTERM at its second question; both requests stayed pending and were answered after each restart; the same runtime finished the execution"
        )
    }

    @Test("run on a terminal asks inline: a y allows the command, a typed answer answers the question, and the run completes")
    func runAsksInline() async throws {
        let serve = try await ServeUnderTest(store: .sqlite)
        defer { serve.tearDown(part: "ask-inline") }
        try await serve.start()
        let terminal = try TerminalRun(
            #""$CLI" run --approvals ask "$PROMPT""#,
            environment: [
                "CLOUD_AGENT_URL": "http://127.0.0.1:\(serve.port)", "CLOUD_AGENT_TOKEN": ServeUnderTest.token,
                "PROMPT": "approve touch inline.txt\nask Your colour?\nsay end",
            ], transcript: serve.directory.url.appendingPathComponent("inline.out"))
        defer { terminal.stop() }
        func screen() -> String { terminal.screen }
        try await eventually(within: 60, "the permission asked inline") { screen().contains("allow? [y]es, [n]o, [a]lways for this tool:") }
        terminal.type("y")
        try await eventually(within: 60, "the question asked inline") { screen().contains("answer (a number picks a choice") }
        terminal.type("blue")
        try await eventually(within: 60, "the run to end") { !terminal.isRunning }
        #expect(terminal.terminationStatus == 0, "\(screen())")
        #expect(screen().contains("answer: blue"), "\(screen())")
        #expect(screen().contains("✓ execution completed"), "\(screen())")
        let id = try #require(screen().firstMatch(of: /agent_[A-Za-z0-9-]+/).map { String($0.output) })
        let workspace = serve.directory.url.appendingPathComponent("data/workspaces/\(id)")
        #expect(FileManager.default.fileExists(atPath: workspace.appendingPathComponent("inline.txt").path), "\(screen())")
        let resolved = try await serve.events(id).filter { $0["type"] == "input.resolved" }
        #expect(resolved.compactMap { $0["data"]?["decision"]?.stringValue } == ["allow", "answer"])
        #expect(resolved.allSatisfy { $0["data"]?["by"] == "user" })
    }

    @Test("the CLI: sessions show lists what the agent waits for and how to answer; answer allows, answers a question, and refuses a bad decision")
    func cli() async throws {
        let serve = try await ServeUnderTest(store: .sqlite)
        defer { serve.tearDown(part: "ask-cli") }
        try await serve.start()
        let environment = ["CLOUD_AGENT_URL": "http://127.0.0.1:\(serve.port)", "CLOUD_AGENT_TOKEN": ServeUnderTest.token, "NO_COLOR": "1"]
        func cli(_ arguments: [String]) async throws -> SpawnedCommand {
            let command = try SpawnedCommand(arguments, environment: environment, in: serve.directory.url)
            if !(try await command.waitForExit(within: 60)) { command.forceStop() }
            return command
        }
        let id = try await Self.start(serve, "approve touch cli.txt\nask Your name?\nsay end")
        let permission = try await Self.pending(serve, id, kind: "permission")
        let requestId = try #require(permission["requestId"]?.stringValue)

        let shown = try await cli(["sessions", "show", id])
        #expect(shown.exitStatus == 0, "\(shown.diagnostics)")
        #expect(shown.stdout.contains("1 input request waits for an answer"), "\(shown.stdout)")
        #expect(shown.stdout.contains("permission to use run: touch cli.txt"), "\(shown.stdout)")
        #expect(shown.stdout.contains("cloud-agent answer \(id) \(requestId) allow|deny"), "\(shown.stdout)")

        let refused = try await cli(["answer", id, requestId, "maybe"])
        #expect(refused.exitStatus != 0)
        #expect(try await serve.request("GET", "/v1/sessions/\(id)")["pendingInput"] == 1)

        let allowed = try await cli(["answer", id, requestId, "allow"])
        #expect(allowed.exitStatus == 0, "\(allowed.diagnostics)")
        #expect(allowed.stdout.contains("\(requestId): allow"), "\(allowed.stdout)")

        let question = try await Self.pending(serve, id, kind: "question")
        let answered = try await cli(["answer", id, try #require(question["requestId"]?.stringValue), "--text", "Ada"])
        #expect(answered.exitStatus == 0, "\(answered.diagnostics)")
        let ended = try await serve.waitForEnd(id)
        #expect(ended["latestExecution"]?["status"] == "completed", "\(ended.text)")
        #expect(try await Self.texts(serve, id) == ["answer: Ada", "end"])

        let events = try await cli(["events", id])
        #expect(events.stdout.contains("the agent asks permission to use run: touch cli.txt"), "\(events.stdout)")
        #expect(events.stdout.contains("the agent asks: Your name?"), "\(events.stdout)")
    }

    @Test("a session with a callback is called back when its agent asks (event input.requested, signed like a completion), then at the completion")
    func callbackWhenInputIsNeeded() async throws {
        let serve = try await ServeUnderTest(store: .sqlite)
        defer { serve.tearDown(part: "ask-callback") }
        try await serve.start()
        let receiver = CallbackReceiver()
        try await receiver.serve { url in
            let created = try await serve.request(
                "POST", "/v1/sessions",
                json: ["prompt": "ask Which way?\nsay went", "approvals": "ask", "callback": ["url": .string(url)]])
            try #require(created.status == 201, "\(created.text)")
            let id = try #require(created["sessionId"]?.stringValue)
            #expect(try await serve.request("POST", "/v1/sessions/\(id)/initiate").status == 202)
            let asked = try await receiver.waitForRequest(1, within: 30)
            let body = try JSONDecoder().decode(JSONValue.self, from: Data(asked.body.utf8))
            #expect(body["event"] == "input.requested")
            #expect(body["sessionId"]?.stringValue == id)
            #expect(body["kind"] == "question")
            #expect(body["question"] == "Which way?")
            #expect(asked.header("X-CloudAgent-Signature")?.hasPrefix("sha256=") == true)
            let requestId = try #require(body["requestId"]?.stringValue)
            #expect(try await Self.answer(serve, id, requestId, ["answer": "left"]).status == 200)
            let completed = try await receiver.waitForRequest(2, within: 30)
            let end = try JSONDecoder().decode(JSONValue.self, from: Data(completed.body.utf8))
            #expect(end["status"] == "completed")
            #expect(end["event"] == nil)
            try await eventually(within: 15, "both deliveries recorded") {
                try await serve.events(id).filter { $0["type"] == "callback.delivered" }.count == 2
            }
            let delivered = try await serve.events(id).filter { $0["type"] == "callback.delivered" }
            #expect(delivered.compactMap { $0["data"]?["requestId"]?.stringValue } == [requestId])
        }
    }
}
