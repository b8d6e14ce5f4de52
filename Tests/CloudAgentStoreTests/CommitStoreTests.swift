import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Testing

@Suite("Store: commit")
struct CommitStoreTests {
    @Test(arguments: StoreBackend.allCases)
    func commitSavesTheSessionRecord(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            var session = try await store.insertFixtureSession()
            session.updatedAt = Fixture.date(500)
            session.initiatedAt = Fixture.date(400)
            session.runtime = .starting(RuntimeStatus.Starting(requestedAt: Fixture.date(400), cold: false))
            session.spec.idleTimeoutMs = 60_000
            session.executionCount = 1
            try await store.commit(SessionChange(sessionId: session.id, session: session))

            #expect(try await store.session(session.id) == session)
            #expect(try await store.sessions(owner: Fixture.alice, limit: 10, after: nil) == [session])

            // A change without a record leaves the record as it is.
            try await store.commit(SessionChange(sessionId: session.id, events: [Fixture.event(at: 600)]))
            #expect(try await store.session(session.id) == session)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func commitOnAMissingSessionThrows(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let missing = SessionID()
            await #expect(throws: StoreError.sessionNotFound(missing)) {
                try await store.commit(SessionChange(sessionId: missing, events: [Fixture.event(at: 1)], wakeUp: Fixture.date(9)))
            }
            #expect(try await store.wakeUps().isEmpty)
            #expect(try await store.lastEventId(of: missing) == 0)

            let deleted = try await store.insertFixtureSession()
            #expect(try await store.deleteSession(deleted.id))
            await #expect(throws: StoreError.sessionNotFound(deleted.id)) {
                try await store.commit(SessionChange(sessionId: deleted.id, newExecution: Fixture.execution(of: deleted.id, at: 1)))
            }
            #expect(try await store.executions(of: deleted.id).isEmpty)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func newExecutionIsRefusedWhileAnotherIsActiveAndNothingChanges(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            // Once while the first execution is pending, once while it is running.
            for firstRuns in [false, true] {
                let session = try await store.insertFixtureSession()
                var first = Fixture.execution(of: session.id, at: 10)
                if firstRuns { try first.markRunning(at: Fixture.date(11)) }
                try await store.commit(
                    SessionChange(
                        sessionId: session.id, newExecution: first,
                        events: [Fixture.event(EventType.executionStarted, at: 10, execution: first.id)], wakeUp: Fixture.date(100)
                    ))
                let sessionBefore = try #require(try await store.session(session.id))

                var changedRecord = sessionBefore
                changedRecord.executionCount = 2
                changedRecord.updatedAt = Fixture.date(20)
                var firstWithProgress = first
                firstWithProgress.recordProgress(at: Fixture.date(19), events: 3)
                let second = Fixture.execution(of: session.id, at: 20)
                await #expect(throws: StoreError.executionInProgress(first.id), "first \(first.status)") {
                    try await store.commit(
                        SessionChange(
                            sessionId: session.id, session: changedRecord, newExecution: second, executions: [firstWithProgress],
                            events: [Fixture.event(EventType.executionStarted, at: 20, execution: second.id)], wakeUp: Fixture.date(200)
                        ))
                }

                #expect(try await store.session(session.id) == sessionBefore)
                #expect(try await store.executions(of: session.id) == [first])
                #expect(try await store.execution(second.id) == nil)
                #expect(try await store.lastEventId(of: session.id) == 1)
                #expect(try await store.allEvents(of: session.id).map(\.id) == [1])
                #expect(try await store.wakeUp(of: session.id) == Fixture.date(100))
            }
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func newExecutionIsAcceptedOnceTheActiveOneEnds(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            var first = Fixture.execution(of: session.id, at: 10)
            try await store.commit(SessionChange(sessionId: session.id, newExecution: first))
            try first.markRunning(at: Fixture.date(11))
            try await store.commit(SessionChange(sessionId: session.id, executions: [first]))

            // The end of the first and the start of the second in one change.
            try first.end(.completed, at: Fixture.date(15), exitCode: 0, reportedByRuntime: true)
            var second = Fixture.execution(of: session.id, at: 20)
            try await store.commit(SessionChange(sessionId: session.id, newExecution: second, executions: [first]))
            #expect(try await store.executions(of: session.id) == [first, second])

            // The second is now the active one.
            let refused = Fixture.execution(of: session.id, at: 25)
            await #expect(throws: StoreError.executionInProgress(second.id)) {
                try await store.commit(SessionChange(sessionId: session.id, newExecution: refused))
            }

            // The end of the second and the start of the third in separate changes.
            try second.end(.interrupted, at: Fixture.date(30), interruptReason: "user", reportedByRuntime: false)
            try await store.commit(SessionChange(sessionId: session.id, executions: [second]))
            let third = Fixture.execution(of: session.id, at: 40)
            try await store.commit(SessionChange(sessionId: session.id, newExecution: third))
            #expect(try await store.executions(of: session.id) == [first, second, third])
            #expect(try await store.latestExecution(of: session.id) == third)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func activeExecutionOfAnotherSessionDoesNotBlock(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let one = try await store.insertFixtureSession()
            let two = try await store.insertFixtureSession()
            let first = Fixture.execution(of: one.id, at: 10)
            let second = Fixture.execution(of: two.id, at: 11)
            try await store.commit(SessionChange(sessionId: one.id, newExecution: first))
            try await store.commit(SessionChange(sessionId: two.id, newExecution: second))
            #expect(try await store.executions(of: one.id) == [first])
            #expect(try await store.executions(of: two.id) == [second])
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func eventIdsRiseByOnePerSessionWithoutGaps(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let one = try await store.insertFixtureSession()
            let two = try await store.insertFixtureSession()
            #expect(try await store.lastEventId(of: one.id) == 0)
            #expect(try await store.lastEventId(of: SessionID()) == 0)

            let data: [String: JSONValue] = [
                "text": "hello", "count": 3, "ratio": .number(1.5), "ok": true, "nothing": nil,
                "list": [1, "two", false], "nested": ["inner": ["deep": "value"]],
            ]
            let firstBatch = try await store.commit(
                SessionChange(
                    sessionId: one.id,
                    events: [
                        Fixture.event(EventType.runtimeStarted, at: 1, data: data),
                        Fixture.event(at: 2),
                        Fixture.event(at: 3),
                    ]))
            #expect(firstBatch.map(\.id) == [1, 2, 3])
            #expect(firstBatch.allSatisfy { $0.sessionId == one.id })
            #expect(firstBatch.first?.data == data)

            let otherSession = try await store.commit(SessionChange(sessionId: two.id, events: [Fixture.event(at: 4), Fixture.event(at: 5)]))
            #expect(otherSession.map(\.id) == [1, 2])

            let secondBatch = try await store.commit(SessionChange(sessionId: one.id, events: [Fixture.event(at: 6), Fixture.event(at: 7)]))
            #expect(secondBatch.map(\.id) == [4, 5])
            #expect(try await store.commit(SessionChange(sessionId: one.id, events: [])).isEmpty)
            let thirdBatch = try await store.commit(SessionChange(sessionId: one.id, events: [Fixture.event(at: 8)]))
            #expect(thirdBatch.map(\.id) == [6])

            #expect(try await store.lastEventId(of: one.id) == 6)
            #expect(try await store.lastEventId(of: two.id) == 2)
            let stored = try await store.allEvents(of: one.id)
            #expect(stored == firstBatch + secondBatch + thirdBatch)
            #expect(stored.map(\.id) == Array(1...6))
            #expect(try await store.allEvents(of: two.id) == otherSession)
        }
    }
}
