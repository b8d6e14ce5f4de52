import CloudAgentCore
import CloudAgentServer
import CloudAgentTestSupport
import Foundation
import HTTPTypes
import Testing

/// A runaway agent against the event caps, through the real server and a real runtime under
/// the sandbox `auto` picks: the store keeps what the caps allow, the agent finishes, and
/// another session's API answers stay fast meanwhile.
@Suite("Event caps: a runaway agent's output is bounded", .processes)
struct EventCapScenarioTests {
    /// The per-execution cap of the run: 10,000 in the suite, so that the flood takes seconds
    /// even on a loaded machine; the default 100,000 (a 300,000-event flood, minutes in a debug
    /// build) with `CLOUD_AGENT_TEST_FULL_RUNAWAY=1`. Same code path, same shape of figures.
    static let cap = ProcessInfo.processInfo.environment["CLOUD_AGENT_TEST_FULL_RUNAWAY"] == "1" ? EventCaps.default.maxEventsPerExecution : 10_000

    @Test(
        "a scripted agent writing three times the event cap: the cap kept, the rest counted in one events.truncated, the execution completes, another session stays fast"
    )
    func runawayAgent() async throws {
        let cap = Self.cap
        let total = cap * 3
        var server = try TestServer(timing: Timing(heartbeatIntervalMs: 500, staleThresholdMs: 30_000, stopGraceMs: 1000))
        server.eventCaps.maxEventsPerExecution = cap
        try await server.run { api in
            let other = try await api.createSession(["prompt": "say elsewhere"])
            let id = try await api.createSession(["prompt": .string("tick \(total) 0\nsay done")])
            let started = ContinuousClock.now
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            // Another session's reads while the flood comes in.
            var latencies: [Duration] = []
            var ended = false
            let deadline = ContinuousClock.now + .seconds(cap >= 100_000 ? 600 : 180)
            while !ended, ContinuousClock.now < deadline {
                let asked = ContinuousClock.now
                #expect(try await api.request(.get, "/v1/sessions/\(other)").status == 200)
                latencies.append(ContinuousClock.now - asked)
                let status = try await api.request(.get, "/v1/sessions/\(id)")["latestExecution"]?["status"]?.stringValue
                ended = status == "completed" || status == "failed" || status == "interrupted"
                try await Task.sleep(for: .milliseconds(50))
            }
            let took = ContinuousClock.now - started
            let view = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(view["latestExecution"]?["status"] == "completed", "\(view.text)")
            let executionId = try #require(view["latestExecution"]?["executionId"]?.stringValue.flatMap(ExecutionID.init(rawValue:)))

            let kept = try await api.plane.store.events(of: id, EventQuery(afterId: 0, limit: 1_000_000, executionId: executionId, types: ["agent"]))
            #expect(kept.count == cap)
            #expect(kept.last?.data["text"] == .string("tick \(cap)/\(total)"))
            let truncated = try await api.plane.store.events(of: id, EventQuery(afterId: 0, limit: 10, types: [EventType.eventsTruncated]))
            #expect(truncated.count == 1)
            let dropped = total - cap + 1
            #expect(truncated.first?.data == ["dropped": .number(Double(dropped)), "reason": "events"])
            #expect(view["events"]?["dropped"]?.doubleValue == Double(dropped))
            #expect(view["latestExecution"]?["progress"]?["events"]?.doubleValue == Double(cap))
            let bytes = view["events"]?["outputBytes"]?.doubleValue ?? 0
            #expect(bytes > 0 && bytes < Double(cap) * 200, "\(bytes) bytes kept")

            let sorted = latencies.sorted()
            let p50 = sorted[sorted.count / 2]
            let worst = sorted.last ?? .zero
            #expect(worst < .seconds(2), "another session's GET took up to \(worst) during the flood")
            Reliability.report(
                "event-cap",
                "scripted agent writing \(total + 1) events (sandbox \(view["sandbox"]?.stringValue ?? "?")): completed in \(took); \(cap) kept (\(Int(bytes)) bytes), \(dropped) dropped in one events.truncated; another session's GET p50 \(p50), max \(worst) over \(latencies.count) reads"
            )
        }
    }
}
