import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentSQLite
import CloudAgentEngine
import CloudAgentServer
import Foundation
import Synchronization
import Testing

/// A graceful shutdown is quiet and loses nothing: evaluations the wake-up scheduler has in
/// flight finish (none fails with `CancellationError`), and the heartbeats accepted in the last
/// flush interval are written.
@Suite("Reliability: graceful shutdown", .processes)
struct ReliabilityShutdownTests {
    @Test("shutdown with a scheduler backlog and fresh heartbeats: no error logged, the last heartbeat durable")
    func quietShutdown() async throws {
        let server = try TestServer()
        let beat = Mutex<(ExecutionID, Date)?>(nil)
        try await server.run { api in
            let plane = api.plane
            // One session with a running execution, heartbeating.
            let now = Date().truncatedToMilliseconds
            let busy = try await Self.runningSession(in: plane.store, idleTimeoutMs: 900_000, at: now)
            var execution = Execution(id: ExecutionID(at: now), sessionId: busy, prompt: "work", acceptedAt: now)
            try execution.markRunning(at: now)
            try await plane.store.commit(SessionChange(sessionId: busy, newExecution: execution))
            // Many idle sessions due at once: the scheduler is busy stopping them at shutdown.
            var idle: [SessionID] = []
            for _ in 0..<600 { idle.append(try await Self.runningSession(in: plane.store, idleTimeoutMs: 1, at: now)) }
            for id in idle { await plane.scheduler.poke(id) }
            try await Task.sleep(for: .milliseconds(30))
            // A heartbeat accepted just before the shutdown (well inside one flush interval).
            let at = Date().truncatedToMilliseconds.addingTimeInterval(1)
            await plane.heartbeats.record(execution.id, at: at)
            beat.withLock { $0 = (execution.id, at) }
        }
        // The scheduler's evaluations and the heartbeat writer are quiet. (A supervisor job cut
        // by the shutdown — "recording a stop failed" — leaves the runtime `stopping`, which the
        // next start finishes; those jobs belong to RuntimeSupervisor and are not checked here.)
        let errors = server.logs.all.filter {
            $0.hasPrefix("error evaluating a session failed") || $0.hasPrefix("error recording heartbeats failed")
                || ($0.contains("CancellationError") && !$0.hasPrefix("error recording a stop failed"))
        }
        #expect(errors.isEmpty, "logged on shutdown: \(errors.prefix(5))")
        let (executionId, at) = try #require(beat.withLock { $0 })
        let store = try SQLiteSessionStore(path: try #require(server.configuration.sqlitePath))
        let stored = try await store.execution(executionId)
        #expect(stored?.lastHeartbeat == at, "the last heartbeat before the shutdown was not written")
    }

    static func runningSession(in store: any SessionStore, idleTimeoutMs: Int64, at now: Date) async throws -> SessionID {
        let id = SessionID()
        var session = SessionRecord(
            id: id, owner: .local, createdAt: now, spec: SessionSpec(prompt: "simulated", idleTimeoutMs: idleTimeoutMs),
            workBranch: "session/\(id.rawValue)"
        )
        session.runtime = .running(
            RuntimeStatus.Running(startedAt: now, requestedAt: now, cold: false, instanceId: UUID().uuidString.lowercased(), connectedAt: now))
        try await store.insertSession(session)
        return id
    }
}
