import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Testing

/// The rules and the view go by the session's active execution, never by the order of execution
/// ids (ids are only roughly ordered by time: two made in the same millisecond, or on nodes whose
/// clocks differ, sort either way).
@Suite("The active execution, not id order", .processes)
struct ActiveExecutionTests {
    @Test("an active execution with an earlier id than a completed one: the runtime is never idle, the view shows the active one")
    func activeExecutionWins() async throws {
        let timing = Timing(idleTimeoutMs: 800, heartbeatIntervalMs: 150, staleThresholdMs: 1500, pendingTimeoutMs: 60_000, stopGraceMs: 1000)
        try await TestServer(timing: timing).run { api in
            let id = try await api.createSession()
            try await api.waitForRuntime(id, state: "running")
            let store = api.plane.store
            let now = Date().truncatedToMilliseconds
            // A completed execution whose id sorts last…
            var completed = Execution(id: ExecutionID(at: now.addingTimeInterval(3600)), sessionId: id, prompt: "later id", acceptedAt: now)
            try await store.commit(SessionChange(sessionId: id, newExecution: completed))
            try completed.markRunning(at: now)
            try completed.end(.completed, at: now, exitCode: 0, reportedByRuntime: true)
            try await store.commit(SessionChange(sessionId: id, executions: [completed]))
            // …and the active one, whose id sorts first.
            let active = Execution(id: ExecutionID(at: now.addingTimeInterval(-3600)), sessionId: id, prompt: "earlier id", acceptedAt: now)
            var session = try #require(try await store.session(id))
            session.activeExecutionId = active.id
            session.executionCount = 2
            try await store.commit(SessionChange(sessionId: id, session: session, newExecution: active))
            await api.plane.scheduler.poke(id)

            // Well past the idle timeout of the completed execution's end.
            try await Task.sleep(for: .milliseconds(2000))
            let view = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(view["runtime"]?["state"] == "running", "stopped while an execution was active: \(view.text)")
            #expect(view["latestExecution"]?["executionId"]?.stringValue == active.id.rawValue)
            #expect(view["activity"]?["idleDeadline"] == .null)
        }
    }
}
