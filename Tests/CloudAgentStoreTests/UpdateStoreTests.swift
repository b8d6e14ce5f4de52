import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Synchronization
import Testing

/// `SessionStore.update` (read, decide, write as one transaction), the runtime outbox, and the
/// change's deletions: the same behaviour from every backend.
@Suite("Store: transactions and the runtime outbox")
struct UpdateStoreTests {
    struct Refused: Error {}

    @Test(arguments: StoreBackend.allCases)
    func updateReadsTheActiveExecutionAndWritesTheDecision(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            var session = try await store.insertFixtureSession()
            // An active execution whose id sorts before a completed one's: the state is the active one.
            let active = Fixture.execution(of: session.id, at: 10)
            var done = Fixture.execution(of: session.id, at: 20)
            try done.markRunning(at: Fixture.date(21))
            try done.end(.completed, at: Fixture.date(22), reportedByRuntime: true)
            session.activeExecutionId = active.id
            try await store.commit(SessionChange(sessionId: session.id, session: session, newExecution: active, executions: [done]))
            try await store.commit(SessionChange(sessionId: session.id, events: [Fixture.event(at: 5)], wakeUp: Fixture.date(99)))

            let seen = Mutex<SessionState?>(nil)
            let committed = try await store.update(session.id, forRules: true) { state in
                seen.withLock { $0 = state }
                var record = try #require(state?.session)
                record.executionCount = 7
                return Decision(change: SessionChange(sessionId: record.id, session: record, events: [Fixture.event(at: 30)]), output: "decided")
            }
            let state = try #require(seen.withLock { $0 })
            #expect(state.execution?.id == active.id)
            #expect(state.oldestEventAt == Fixture.date(5))
            #expect(state.wakeUp == Fixture.date(99))
            #expect(committed.output == "decided")
            #expect(committed.events.map(\.id) == [2])
            #expect(try await store.session(session.id)?.executionCount == 7)

            // Without `forRules`, what only the rules need is not read.
            _ = try await store.update(session.id) { state in
                #expect(state?.oldestEventAt == nil && state?.wakeUp == nil)
                return Decision(output: ())
            }
            // A missing session is nil to the decision.
            let missing = SessionID()
            let none = try await store.update(missing) { state in Decision(output: state == nil) }
            #expect(none.output)
            #expect(none.change == nil)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func aDecisionThatThrowsWritesNothing(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            await #expect(throws: Refused.self) {
                _ =
                    try await store.update(session.id) { state in
                        _ = state
                        throw Refused()
                    } as Committed<Void>
            }
            #expect(try await store.session(session.id) == session)
            #expect(try await store.lastEventId(of: session.id) == 0)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func concurrentUpdatesOfOneSessionAreSerialized(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            // Each reads the count and writes it plus one: no update is lost.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<20 {
                    group.addTask {
                        _ = try await store.update(session.id) { state in
                            var record = try #require(state?.session)
                            record.executionCount += 1
                            return Decision(change: SessionChange(sessionId: record.id, session: record))
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await store.session(session.id)?.executionCount == 20)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func theOutboxKeepsRowsInOrderOncePerExecutionUntilMoot(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            let id = session.id
            let first = Fixture.execution(of: id, at: 1).id
            let second = Fixture.execution(of: id, at: 2).id
            try await store.commit(SessionChange(sessionId: id, commands: [.execute(first), .settings(idleTimeoutMs: 1000)]))
            // The same execute again is not a second row; a settings row replaces the older one.
            try await store.commit(
                SessionChange(
                    sessionId: id, commands: [.execute(first), .kill(first, reason: "user"), .settings(idleTimeoutMs: 2000)], dropCommands: [.settings]
                ))
            var rows = try await store.commands(of: id, after: 0)
            #expect(rows.map(\.command) == [.execute(first), .kill(first, reason: "user"), .settings(idleTimeoutMs: 2000)])
            #expect(rows.map(\.id) == rows.map(\.id).sorted())
            #expect(try await store.commands(of: id, after: rows[0].id).map(\.command) == Array(rows.dropFirst()).map(\.command))
            // The execution runs: its execute is moot; it ends: its kill too.
            try await store.commit(SessionChange(sessionId: id, commands: [.execute(second)], dropCommands: [.execution(first, kinds: ["execute"])]))
            rows = try await store.commands(of: id, after: 0)
            #expect(rows.map(\.command) == [.kill(first, reason: "user"), .settings(idleTimeoutMs: 2000), .execute(second)])
            try await store.commit(SessionChange(sessionId: id, dropCommands: [.execution(first, kinds: ["execute", "kill"])]))
            #expect(try await store.commands(of: id, after: 0).map(\.command) == [.settings(idleTimeoutMs: 2000), .execute(second)])
            // The runtime stops: everything goes. A deleted session takes its rows with it.
            try await store.commit(SessionChange(sessionId: id, dropCommands: [.all]))
            #expect(try await store.commands(of: id, after: 0).isEmpty)
            try await store.commit(SessionChange(sessionId: id, commands: [.execute(second)]))
            #expect(try await store.deleteSession(id))
            #expect(try await store.commands(of: id, after: 0).isEmpty)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func aChangeDeletesOldEventsOrTheWholeSession(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            try await store.commit(SessionChange(sessionId: session.id, events: [Fixture.event(at: 1), Fixture.event(at: 2), Fixture.event(at: 3)]))
            try await store.commit(SessionChange(sessionId: session.id, deleteEventsBefore: Fixture.date(3)))
            #expect(try await store.events(of: session.id, EventQuery()).map(\.id) == [3])
            // The deletion's own events are numbered for live subscribers, not kept.
            let last = try await store.commit(SessionChange(sessionId: session.id, events: [Fixture.event(at: 4)], deletesSession: true))
            #expect(last.map(\.id) == [4])
            #expect(try await store.session(session.id) == nil)
            #expect(try await store.events(of: session.id, EventQuery()).isEmpty)
        }
    }
}
