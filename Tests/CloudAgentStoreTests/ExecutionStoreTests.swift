import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Testing

@Suite("Store: executions")
struct ExecutionStoreTests {
    @Test(arguments: StoreBackend.allCases)
    func executionsAreListedOldestFirst(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            let other = try await store.insertFixtureSession()
            #expect(try await store.executions(of: session.id).isEmpty)
            #expect(try await store.latestExecution(of: session.id) == nil)

            // Saved out of order: the ids (which sort by creation time) decide the order.
            let first = try Fixture.completed(of: session.id, at: 1_000)
            let second = try Fixture.completed(of: session.id, at: 2_000)
            let third = try Fixture.completed(of: session.id, at: 3_000)
            let fourth = Fixture.execution(of: session.id, at: 4_000)
            #expect(first.id < second.id && second.id < third.id && third.id < fourth.id)
            try await store.commit(SessionChange(sessionId: session.id, executions: [third, first]))
            try await store.commit(SessionChange(sessionId: session.id, newExecution: fourth, executions: [second]))
            let foreign = Fixture.execution(of: other.id, at: 5_000)
            try await store.commit(SessionChange(sessionId: other.id, newExecution: foreign))

            #expect(try await store.executions(of: session.id) == [first, second, third, fourth])
            #expect(try await store.latestExecution(of: session.id) == fourth)
            #expect(try await store.executions(of: other.id) == [foreign])
            #expect(try await store.latestExecution(of: other.id) == foreign)
            #expect(try await store.execution(second.id) == second)
            #expect(try await store.execution(ExecutionID(at: Fixture.date(1_000))) == nil)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func everyFieldRoundTrips(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()

            let pending = Execution(
                id: ExecutionID(at: Fixture.date(100)), sessionId: session.id, prompt: "pending one", mode: "plan",
                model: "model-a", acceptedAt: Fixture.date(100)
            )

            var running = Fixture.execution(of: session.id, at: 200, prompt: "running one")
            running.mode = "code"
            try running.markRunning(at: Fixture.date(201))
            try running.recordHeartbeat(at: Fixture.date(250))
            running.recordProgress(at: Fixture.date(240), events: 4)
            running.stuckReportedAt = Fixture.date(245)

            var completed = Fixture.execution(of: session.id, at: 300, prompt: "completed one")
            completed.model = "model-b"
            try completed.markRunning(at: Fixture.date(301))
            try completed.recordHeartbeat(at: Fixture.date(310))
            completed.recordProgress(at: Fixture.date(320), events: 2)
            try completed.end(.completed, at: Fixture.date(330), exitCode: 0, reportedByRuntime: true)

            var failed = Fixture.execution(of: session.id, at: 400, prompt: "failed one")
            try failed.markRunning(at: Fixture.date(401))
            try failed.end(.failed, at: Fixture.date(430), exitCode: 2, error: "agent exited with status 2", reportedByRuntime: true)

            var declaredFailed = Fixture.execution(of: session.id, at: 500, prompt: "lost one")
            try declaredFailed.markRunning(at: Fixture.date(501))
            try declaredFailed.recordHeartbeat(at: Fixture.date(502))
            declaredFailed.stuckReportedAt = Fixture.date(520)
            try declaredFailed.end(.failed, at: Fixture.date(530), error: "no heartbeat for 60s", reportedByRuntime: false)

            var interrupted = Fixture.execution(of: session.id, at: 600, prompt: "interrupted one")
            try interrupted.markRunning(at: Fixture.date(601))
            try interrupted.end(.interrupted, at: Fixture.date(630), interruptReason: "runtime shutdown: SIGTERM", reportedByRuntime: true)

            var interruptedBeforeRunning = Fixture.execution(of: session.id, at: 700, prompt: "never ran")
            try interruptedBeforeRunning.end(.interrupted, at: Fixture.date(710), interruptReason: "deleted", reportedByRuntime: false)

            let ended = [completed, failed, declaredFailed, interrupted, interruptedBeforeRunning]
            try await store.commit(SessionChange(sessionId: session.id, newExecution: pending, executions: ended))
            for execution in ended + [pending] {
                #expect(try await store.execution(execution.id) == execution, "\(execution.prompt)")
            }

            // The pending one starts running (saved as given), then a new running one is added.
            var pendingNowEnded = pending
            try pendingNowEnded.end(.interrupted, at: Fixture.date(150), interruptReason: "superseded", reportedByRuntime: false)
            try await store.commit(SessionChange(sessionId: session.id, newExecution: running, executions: [pendingNowEnded]))
            #expect(try await store.execution(pendingNowEnded.id) == pendingNowEnded)
            #expect(try await store.execution(running.id) == running)
            #expect(try await store.executions(of: session.id) == [pendingNowEnded, running] + ended)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func heartbeatsUpdateOnlyRunningExecutionsAndNeverGoBack(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let sessions = [
                try await store.insertFixtureSession(), try await store.insertFixtureSession(),
                try await store.insertFixtureSession(), try await store.insertFixtureSession(),
            ]
            let running = try Fixture.running(of: sessions[0].id, at: 0, heartbeat: 10)
            let runningWithoutHeartbeat = try Fixture.running(of: sessions[1].id, at: 0)
            let pending = Fixture.execution(of: sessions[2].id, at: 0)
            let completed = try Fixture.completed(of: sessions[3].id, at: 0)
            for execution in [running, runningWithoutHeartbeat, pending] {
                try await store.commit(SessionChange(sessionId: execution.sessionId, newExecution: execution))
            }
            try await store.commit(SessionChange(sessionId: completed.sessionId, executions: [completed]))

            #expect(try await store.recordHeartbeats([]) == 0)
            let changed = try await store.recordHeartbeats([
                Heartbeat(executionId: running.id, at: Fixture.date(20)),
                Heartbeat(executionId: runningWithoutHeartbeat.id, at: Fixture.date(21)),
                Heartbeat(executionId: pending.id, at: Fixture.date(22)),
                Heartbeat(executionId: completed.id, at: Fixture.date(23)),
                Heartbeat(executionId: ExecutionID(at: Fixture.date(0)), at: Fixture.date(24)),
            ])
            #expect(changed == 2)
            #expect(try await store.execution(running.id)?.lastHeartbeat == Fixture.date(20))
            #expect(try await store.execution(runningWithoutHeartbeat.id)?.lastHeartbeat == Fixture.date(21))
            #expect(try await store.execution(pending.id) == pending)
            #expect(try await store.execution(completed.id) == completed)

            // Only the heartbeat column moves.
            var expected = running
            expected.lastHeartbeat = Fixture.date(20)
            #expect(try await store.execution(running.id) == expected)

            // An older heartbeat changes nothing and is not counted.
            #expect(try await store.recordHeartbeats([Heartbeat(executionId: running.id, at: Fixture.date(15))]) == 0)
            #expect(try await store.execution(running.id)?.lastHeartbeat == Fixture.date(20))

            // Within one batch the latest wins, whatever the order.
            try await store.recordHeartbeats([
                Heartbeat(executionId: running.id, at: Fixture.date(40)),
                Heartbeat(executionId: running.id, at: Fixture.date(30)),
            ])
            #expect(try await store.execution(running.id)?.lastHeartbeat == Fixture.date(40))
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func savingAnExecutionNeverMovesItsHeartbeatBack(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            let running = try Fixture.running(of: session.id, at: 0, heartbeat: 10)
            try await store.commit(SessionChange(sessionId: session.id, newExecution: running))
            #expect(try await store.recordHeartbeats([Heartbeat(executionId: running.id, at: Fixture.date(50))]) == 1)

            // A copy read before the last heartbeat is saved with new progress (the session actor's view).
            var stale = running
            stale.recordProgress(at: Fixture.date(45), events: 2)
            try await store.commit(SessionChange(sessionId: session.id, executions: [stale]))
            let afterStaleSave = try #require(try await store.execution(running.id))
            #expect(afterStaleSave.lastHeartbeat == Fixture.date(50))
            #expect(afterStaleSave.progressEvents == 2)

            // A newer heartbeat in a saved record does move it forward.
            var newer = stale
            try newer.recordHeartbeat(at: Fixture.date(60))
            try await store.commit(SessionChange(sessionId: session.id, executions: [newer]))
            #expect(try await store.execution(running.id)?.lastHeartbeat == Fixture.date(60))

            // Ending it from a stale copy keeps the latest heartbeat too.
            var ended = stale
            try ended.end(.completed, at: Fixture.date(70), exitCode: 0, reportedByRuntime: true)
            try await store.commit(SessionChange(sessionId: session.id, executions: [ended]))
            var expected = ended
            expected.lastHeartbeat = Fixture.date(60)
            #expect(try await store.execution(running.id) == expected)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func savingACopyReadBeforeTheFirstHeartbeatKeepsTheHeartbeat(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            let running = try Fixture.running(of: session.id, at: 0)
            #expect(running.lastHeartbeat == nil)
            try await store.commit(SessionChange(sessionId: session.id, newExecution: running))
            #expect(try await store.recordHeartbeats([Heartbeat(executionId: running.id, at: Fixture.date(50))]) == 1)

            var stale = running
            stale.recordProgress(at: Fixture.date(45))
            try await store.commit(SessionChange(sessionId: session.id, executions: [stale]))
            let saved = try #require(try await store.execution(running.id))
            #expect(saved.lastHeartbeat == Fixture.date(50))
            #expect(saved.progressEvents == 1)
        }
    }
}
