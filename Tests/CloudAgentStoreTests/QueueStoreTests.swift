import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import Synchronization
import Testing

/// Queued executions in the store: kept as rows with status `queued`, never read as a session's
/// latest execution, the queue's head read for the rules, and a cancellation deleting only a
/// row that is still queued. The same from every backend.
@Suite("Store: the message queue")
struct QueueStoreTests {
    @Test(arguments: StoreBackend.allCases)
    func queuedRowsAreKeptButNeverTheLatestAndTheHeadIsReadForTheRules(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            var session = try await store.insertFixtureSession()
            var active = Fixture.execution(of: session.id, at: 10)
            try active.markRunning(at: Fixture.date(11))
            session.activeExecutionId = active.id
            try await store.commit(SessionChange(sessionId: session.id, session: session, newExecution: active))
            // Two follow-ups queued behind it: a queued new execution is not refused as a second active one.
            let first = Execution.queued(id: ExecutionID(at: Fixture.date(20)), sessionId: session.id, prompt: "first", at: Fixture.date(20))
            let second = Execution.queued(id: ExecutionID(at: Fixture.date(30)), sessionId: session.id, prompt: "second", at: Fixture.date(30))
            for queued in [first, second] {
                session.queue.append(queued.id)
                try await store.commit(SessionChange(sessionId: session.id, session: session, newExecution: queued))
            }
            #expect(try await store.execution(first.id)?.status == .queued)
            #expect(try await store.execution(first.id)?.queuedAt == Fixture.date(20))
            #expect(try await store.executions(of: session.id).map(\.id) == [active.id, first.id, second.id])

            // The active one ends: the latest is still it, never a queued row with a later id.
            try active.end(.completed, at: Fixture.date(40), reportedByRuntime: true)
            session.activeExecutionId = nil
            try await store.commit(SessionChange(sessionId: session.id, session: session, executions: [active]))
            #expect(try await store.latestExecution(of: session.id)?.id == active.id)
            let seen = Mutex<SessionState?>(nil)
            _ = try await store.update(session.id, forRules: true) { state in
                seen.withLock { $0 = state }
                return Decision(output: ())
            }
            let state = try #require(seen.withLock { $0 })
            #expect(state.execution?.id == active.id)
            #expect(state.nextQueued?.id == first.id)
            #expect(state.nextQueued?.prompt == "first")
            // Not for the rules: the head is not read.
            _ = try await store.update(session.id, forRules: false) { state in
                #expect(state?.nextQueued == nil)
                return Decision(output: ())
            }

            // The head's turn: promoted to pending (its started_at moves to its turn).
            var promoted = first
            try promoted.promote(at: Fixture.date(50))
            session.queue.removeFirst()
            session.activeExecutionId = promoted.id
            try await store.commit(SessionChange(sessionId: session.id, session: session, executions: [promoted]))
            let stored = try #require(try await store.execution(first.id))
            #expect(stored.status == .pending)
            #expect(stored.startedAt == Fixture.date(50))
            #expect(stored.queuedAt == Fixture.date(20))

            // A cancellation deletes a queued row, and never one that has started.
            session.queue.removeAll()
            try await store.commit(SessionChange(sessionId: session.id, session: session, cancelledQueued: [second.id, first.id]))
            #expect(try await store.execution(second.id) == nil)
            #expect(try await store.execution(first.id)?.status == .pending)
        }
    }
}
