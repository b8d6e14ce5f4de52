import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import HTTPTypes
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The message queue through the real HTTP server, with real runtimes under the sandbox `auto`
/// picks: follow-ups wait their turn and run in order whatever the outcome before them, survive
/// a crash of the runtime and of `serve`, and can be listed and cancelled.
@Suite("Message queue: follow-ups wait their turn", .processes)
struct MessageQueueScenarioTests {
    static func texts(_ api: TestAPI, _ id: SessionID) async throws -> [String] {
        let events = try await api.request(.get, "/v1/sessions/\(id)/events?limit=1000")["events"]?.arrayValue ?? []
        return events.filter { $0["type"] == "agent" }.compactMap { $0["data"]?["text"]?.stringValue }
    }

    static func queue(_ api: TestAPI, _ id: SessionID, _ prompt: String) async throws -> APIResponse {
        try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": .string(prompt), "queue": true])
    }

    @Test(
        "queued follow-ups run in order once the active one ends, whatever its outcome; listed with positions, cancellable, bounded at 20; refusals change nothing"
    )
    func inOrderListedCancelledBounded() async throws {
        let server = try TestServer(timing: Timing(heartbeatIntervalMs: 200, staleThresholdMs: 5000, stopGraceMs: 1000))
        try await server.run { api in
            let id = try await api.createSession(["prompt": "say first\nsleep 3"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            // Without queue, a follow-up while the agent works is still a conflict.
            let refused = try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say nope"])
            #expect(refused.status == 409 && refused.errorCode == "EXECUTION_IN_PROGRESS")
            let bad = try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say x", "queue": "yes"])
            #expect(bad.status == 400 && bad["error"]?["field"] == "queue")

            let second = try await Self.queue(api, id, "say second\nexit 3")
            #expect(second.status == 202, "\(second.text)")
            #expect(second["status"] == "queued" && second["position"] == 1)
            let third = try await Self.queue(api, id, "say third")
            #expect(third["position"] == 2)
            let dropped = try await Self.queue(api, id, "say dropped")
            #expect(dropped["position"] == 3)
            let droppedId = try #require(dropped["executionId"]?.stringValue)

            // Listed in order, with positions; the session counts them.
            let listed = try await api.request(.get, "/v1/sessions/\(id)/executions?status=queued")
            #expect(listed["executions"]?.arrayValue?.compactMap { $0["position"]?.intValue } == [1, 2, 3])
            #expect(listed["executions"]?.arrayValue?.allSatisfy { $0["status"] == "queued" && $0["queuedAt"]?.stringValue != nil } == true)
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["queuedCount"] == 3)
            #expect(try await api.request(.get, "/v1/sessions/\(id)/executions?status=bogus").status == 400)

            // Cancel the last; the active one cannot be cancelled; a cancelled one is gone.
            #expect(try await api.request(.delete, "/v1/sessions/\(id)/executions/\(droppedId)").status == 204)
            #expect(try await api.request(.delete, "/v1/sessions/\(id)/executions/\(droppedId)").status == 404)
            let active = try #require(try await api.request(.get, "/v1/sessions/\(id)")["activeExecutionId"]?.stringValue)
            let notQueued = try await api.request(.delete, "/v1/sessions/\(id)/executions/\(active)")
            #expect(notQueued.status == 409 && notQueued.errorCode == "INVALID_STATE")
            // Another user's session is a 404.
            #expect(try await api.request(.delete, "/v1/sessions/\(id)/executions/\(droppedId)", token: "someone-else").status == 401)

            try await eventually(within: 60, "the queue to run") {
                let view = try await api.request(.get, "/v1/sessions/\(id)")
                return view["queuedCount"] == 0 && view["activeExecutionId"] == .null && view["latestExecution"]?["status"] == "completed"
            }
            let executions = try await api.request(.get, "/v1/sessions/\(id)/executions")["executions"]?.arrayValue ?? []
            #expect(executions.compactMap { $0["status"]?.stringValue } == ["completed", "failed", "completed"])
            #expect(try await Self.texts(api, id) == ["first", "second", "third"])
            let types = (try await api.request(.get, "/v1/sessions/\(id)/events?limit=1000")["events"]?.arrayValue ?? []).compactMap { $0["type"]?.stringValue }
            #expect(types.filter { $0 == "execution.queued" }.count == 3)
            #expect(types.filter { $0 == "execution.cancelled" }.count == 1)

            // At most 20 wait: the 21st is 429 QUEUE_FULL, retryable, naming the limit; nothing changes.
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "sleep 30"]).status == 202)
            var queued: [String] = []
            for index in 1...20 {
                let answer = try await Self.queue(api, id, "say \(index)")
                try #require(answer.status == 202, "\(answer.text)")
                queued.append(try #require(answer["executionId"]?.stringValue))
            }
            let full = try await Self.queue(api, id, "say 21")
            #expect(full.status == 429 && full.errorCode == "QUEUE_FULL", "\(full.text)")
            #expect(full["error"]?["limit"] == 20 && full["error"]?["retryable"] == true)
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["queuedCount"] == 20)
            for execution in queued.dropFirst() {
                #expect(try await api.request(.delete, "/v1/sessions/\(id)/executions/\(execution)").status == 204)
            }
            #expect(try await api.request(.post, "/v1/sessions/\(id)/interrupt").status == 200)
            try await eventually(within: 30, "the one left to run after the interrupt") {
                try await Self.texts(api, id).last == "1"
            }
        }
    }

    @Test("the runtime dies under the active execution: it fails, and the next queued one cold-starts a new runtime and completes")
    func runtimeCrashColdStartsTheNext() async throws {
        let server = try TestServer(timing: Timing(heartbeatIntervalMs: 200, staleThresholdMs: 5000, stopGraceMs: 1000))
        try await server.run { api in
            let id = try await api.createSession(["prompt": "say working\nsleep 30"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await eventually(within: 30, "the agent at work") { try await Self.texts(api, id) == ["working"] }
            #expect(try await Self.queue(api, id, "say after the crash").status == 202)
            let before = try await api.request(.get, "/v1/sessions/\(id)")["runtime"]?["startedAt"]
            try await api.killRuntime(id)
            try await eventually(within: 60, "the queued execution to complete on a new runtime") {
                try await api.request(.get, "/v1/sessions/\(id)")["latestExecution"]?["status"] == "completed"
            }
            let executions = try await api.request(.get, "/v1/sessions/\(id)/executions")["executions"]?.arrayValue ?? []
            #expect(executions.compactMap { $0["status"]?.stringValue } == ["failed", "completed"])
            let view = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(view["runtime"]?["startedAt"] != before, "a new runtime")
            #expect(try await Self.texts(api, id) == ["working", "after the crash"])
        }
    }

    @Test("serve killed (-9) with follow-ups queued, and started again: none is lost, they run in order", arguments: [ServeStore.sqlite, .postgres])
    func queueSurvivesKill(_ store: ServeStore) async throws {
        let serve = try await ServeUnderTest(store: store)
        defer { serve.tearDown(part: "queue-kill-\(store.rawValue)") }
        try await serve.start()
        let id = try await serve.initiate("say first\nsleep 2")
        for prompt in ["say second", "say third"] {
            let queued = try await serve.request("POST", "/v1/sessions/\(id)/messages", json: ["prompt": .string(prompt), "queue": true])
            try #require(queued.status == 202 && queued["status"] == "queued", "\(queued.text)")
        }
        let killedAt = ContinuousClock.now
        try await serve.stop(with: SIGKILL)
        try await serve.start()
        let down = ContinuousClock.now - killedAt
        try await eventually(within: 60, "the queue to run after the restart") {
            let view = try await serve.request("GET", "/v1/sessions/\(id)")
            return view["queuedCount"] == 0 && view["activeExecutionId"] == .null
        }
        let texts = try await serve.events(id).filter { $0["type"] == "agent" }.compactMap { $0["data"]?["text"]?.stringValue }
        #expect(texts == ["first", "second", "third"], "\(serve.diagnostics)")
        let executions = try await serve.request("GET", "/v1/sessions/\(id)/executions")["executions"]?.arrayValue ?? []
        #expect(executions.compactMap { $0["status"]?.stringValue } == ["completed", "completed", "completed"])
        Reliability.report(
            "queue-restart",
            "\(store.rawValue): serve killed (-9) with 2 follow-ups queued behind a running execution, down \(down); after the restart all 3 ran in order, none lost"
        )
    }
}
