import CloudAgentTestSupport
import CloudAgentCore
import Foundation
import Testing

@Suite("Store: sessions")
struct SessionStoreTests {
    @Test(arguments: StoreBackend.allCases)
    func insertedSessionReadsBackEqual(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let box = try SecretBox(base64Key: SecretBox.generateBase64Key())
            let session = Fixture.fullSession(box: box, secret: "hunter2")
            try await store.insertSession(session)

            let loaded = try #require(try await store.session(session.id))
            #expect(loaded == session)
            let apiKey = try #require(loaded.spec.secrets["API_KEY"])
            let repoToken = try #require(loaded.spec.repo?.token)
            let header = try #require(loaded.spec.callback?.headers["Authorization"])
            #expect(try box.open(apiKey) == "hunter2")
            #expect(try box.open(repoToken) == "repo-hunter2")
            #expect(try box.open(header) == "Bearer hunter2")
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func unknownSessionIsNil(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            try await store.insertFixtureSession()
            #expect(try await store.session(SessionID()) == nil)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func duplicateInsertThrowsAndKeepsTheFirst(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let first = Fixture.session(prompt: "first")
            try await store.insertSession(first)
            let second = Fixture.session(owner: Fixture.bob, createdAt: Fixture.date(99), id: first.id, prompt: "second")

            await #expect(throws: StoreError.duplicateSession(first.id)) {
                try await store.insertSession(second)
            }
            #expect(try await store.session(first.id) == first)
            #expect(try await store.sessions(owner: Fixture.bob, limit: 10, after: nil).isEmpty)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func listIsNewestFirstAndPagesCoverEverySessionOnce(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            // Seven distinct creation times, inserted out of order, and two sessions created in the same millisecond.
            var sessions: [SessionRecord] = []
            for offset: Int64 in [3_000, 1_000, 6_000, 2_000, 7_000, 4_000, 5_000] {
                sessions.append(try await store.insertFixtureSession(createdAt: Fixture.date(offset)))
            }
            for _ in 0..<2 {
                sessions.append(try await store.insertFixtureSession(createdAt: Fixture.date(4_500)))
            }
            // Someone else's sessions are never listed.
            try await store.insertFixtureSession(owner: Fixture.bob, createdAt: Fixture.date(4_500))

            // Newest first; sessions of the same millisecond by id, descending (the cursor's order).
            let expected = sessions.sorted { ($0.createdAt, $0.id.rawValue) > ($1.createdAt, $1.id.rawValue) }
            let all = try await store.sessions(owner: Fixture.alice, limit: 100, after: nil)
            #expect(all.map(\.id) == expected.map(\.id))
            #expect(all == expected)

            let firstThree = try await store.sessions(owner: Fixture.alice, limit: 3, after: nil)
            #expect(firstThree.map(\.id) == expected.prefix(3).map(\.id))
            #expect(try await store.sessions(owner: Fixture.alice, limit: 0, after: nil).isEmpty)

            for limit in [1, 2, 3, 4, 8, 9, 10] {
                var paged: [SessionRecord] = []
                var cursor: SessionCursor?
                var pages = 0
                while true {
                    let page = try await store.sessions(owner: Fixture.alice, limit: limit, after: cursor)
                    #expect(page.count <= limit)
                    paged += page
                    pages += 1
                    guard page.count == limit, let last = page.last, pages <= expected.count + 1 else { break }
                    // Go through the token the API hands out, as a client would.
                    let next = SessionCursor(token: SessionCursor(after: last).token)
                    #expect(next == SessionCursor(after: last))
                    cursor = next
                }
                #expect(paged.map(\.id) == expected.map(\.id), "limit \(limit)")
                #expect(Set(paged.map(\.id)).count == expected.count, "limit \(limit)")
            }

            // After the oldest there is nothing.
            let oldest = try #require(expected.last)
            #expect(try await store.sessions(owner: Fixture.alice, limit: 10, after: SessionCursor(after: oldest)).isEmpty)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func listIsolatesOwners(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let alice = try await store.insertFixtureSession(owner: Fixture.alice, createdAt: Fixture.date(1))
            let bob = try await store.insertFixtureSession(owner: Fixture.bob, createdAt: Fixture.date(2))
            let aliceAtX = try await store.insertFixtureSession(owner: Fixture.aliceAtX, createdAt: Fixture.date(3))

            #expect(try await store.sessions(owner: Fixture.alice, limit: 10, after: nil).map(\.id) == [alice.id])
            #expect(try await store.sessions(owner: Fixture.bob, limit: 10, after: nil).map(\.id) == [bob.id])
            #expect(try await store.sessions(owner: Fixture.aliceAtX, limit: 10, after: nil).map(\.id) == [aliceAtX.id])
            #expect(try await store.sessions(owner: Owner(user: "alice", org: "org-y"), limit: 10, after: nil).isEmpty)
            #expect(try await store.sessions(owner: Owner(user: "bob", org: "org-x"), limit: 10, after: nil).isEmpty)
            #expect(try await store.sessions(owner: Owner(user: "carol"), limit: 10, after: nil).isEmpty)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func deleteRemovesTheSessionWithItsExecutionsEventsAndWakeUp(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let doomed = try await store.insertFixtureSession(createdAt: Fixture.date(1))
            let kept = try await store.insertFixtureSession(createdAt: Fixture.date(2))
            for session in [doomed, kept] {
                let done = try Fixture.completed(of: session.id, at: 10)
                let active = Fixture.execution(of: session.id, at: 20)
                try await store.commit(
                    SessionChange(
                        sessionId: session.id, newExecution: active, executions: [done],
                        events: [Fixture.event(at: 10, execution: done.id), Fixture.event(at: 20, execution: active.id)],
                        wakeUp: Fixture.date(1_000)
                    ))
            }
            let doomedExecutions = try await store.executions(of: doomed.id)
            #expect(doomedExecutions.count == 2)
            let keptExecutions = try await store.executions(of: kept.id)
            let keptEvents = try await store.allEvents(of: kept.id)

            #expect(try await store.deleteSession(doomed.id) == true)
            #expect(try await store.deleteSession(doomed.id) == false)
            #expect(try await store.deleteSession(SessionID()) == false)

            #expect(try await store.session(doomed.id) == nil)
            #expect(try await store.executions(of: doomed.id).isEmpty)
            #expect(try await store.latestExecution(of: doomed.id) == nil)
            for execution in doomedExecutions {
                #expect(try await store.execution(execution.id) == nil)
            }
            #expect(try await store.allEvents(of: doomed.id).isEmpty)
            #expect(try await store.lastEventId(of: doomed.id) == 0)
            #expect(try await store.oldestEventAt(of: doomed.id) == nil)
            #expect(try await store.wakeUp(of: doomed.id) == nil)
            #expect(try await store.wakeUps().map(\.sessionId) == [kept.id])
            #expect(try await store.sessions(owner: Fixture.alice, limit: 10, after: nil).map(\.id) == [kept.id])

            // The other session is untouched.
            #expect(try await store.session(kept.id) == kept)
            #expect(try await store.executions(of: kept.id) == keptExecutions)
            #expect(try await store.allEvents(of: kept.id) == keptEvents)
            #expect(try await store.wakeUp(of: kept.id) == Fixture.date(1_000))
        }
    }
}
