import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Testing

@Suite("Store: wake-ups")
struct WakeUpStoreTests {
    @Test("a new session's first wake-up is written with it", arguments: StoreBackend.allCases)
    func insertedWithItsWakeUp(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = SessionRecord(id: SessionID(), owner: .local, createdAt: Fixture.date(0), spec: SessionSpec(prompt: "p"))
            try await store.insertSession(session, wakeUp: Fixture.date(0))
            #expect(try await store.wakeUps() == [WakeUp(sessionId: session.id, dueAt: Fixture.date(0))])
            // A duplicate is refused and changes no wake-up.
            await #expect(throws: StoreError.self) { try await store.insertSession(session, wakeUp: Fixture.date(5)) }
            #expect(try await store.wakeUp(of: session.id) == Fixture.date(0))
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func commitSetsKeepsAndClearsTheWakeUp(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            #expect(try await store.wakeUp(of: session.id) == nil)
            #expect(try await store.wakeUps().isEmpty)

            try await store.commit(SessionChange(sessionId: session.id, wakeUp: .some(Fixture.date(1_000))))
            #expect(try await store.wakeUp(of: session.id) == Fixture.date(1_000))
            #expect(try await store.wakeUps() == [WakeUp(sessionId: session.id, dueAt: Fixture.date(1_000))])

            // nil leaves it as it is.
            try await store.commit(SessionChange(sessionId: session.id, events: [Fixture.event(at: 1)], wakeUp: nil))
            #expect(try await store.wakeUp(of: session.id) == Fixture.date(1_000))

            // Moved earlier and later.
            try await store.commit(SessionChange(sessionId: session.id, wakeUp: .some(Fixture.date(500))))
            #expect(try await store.wakeUp(of: session.id) == Fixture.date(500))
            try await store.commit(SessionChange(sessionId: session.id, wakeUp: .some(Fixture.date(2_000))))
            #expect(try await store.wakeUps() == [WakeUp(sessionId: session.id, dueAt: Fixture.date(2_000))])

            // .some(nil) clears it, and clearing twice is harmless.
            try await store.commit(SessionChange(sessionId: session.id, wakeUp: .some(nil)))
            #expect(try await store.wakeUp(of: session.id) == nil)
            #expect(try await store.wakeUps().isEmpty)
            try await store.commit(SessionChange(sessionId: session.id, wakeUp: .some(nil)))
            #expect(try await store.wakeUp(of: session.id) == nil)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func wakeUpsAreSortedByDueTime(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            var expected: [WakeUp] = []
            for due: Int64 in [30_000, 10_000, 50_000, 20_000, 40_000] {
                let session = try await store.insertFixtureSession()
                try await store.commit(SessionChange(sessionId: session.id, wakeUp: .some(Fixture.date(due))))
                expected.append(WakeUp(sessionId: session.id, dueAt: Fixture.date(due)))
            }
            let withoutWakeUp = try await store.insertFixtureSession()
            expected.sort { $0.dueAt < $1.dueAt }

            #expect(try await store.wakeUps() == expected)
            for wakeUp in expected {
                #expect(try await store.wakeUp(of: wakeUp.sessionId) == wakeUp.dueAt)
            }
            #expect(try await store.wakeUp(of: withoutWakeUp.id) == nil)

            // Moving the last one to the front reorders the list.
            let last = try #require(expected.last)
            try await store.commit(SessionChange(sessionId: last.sessionId, wakeUp: .some(Fixture.date(1))))
            #expect(try await store.wakeUps().first == WakeUp(sessionId: last.sessionId, dueAt: Fixture.date(1)))
            #expect(try await store.wakeUps().map(\.sessionId) == [last.sessionId] + expected.dropLast().map(\.sessionId))
        }
    }
}
