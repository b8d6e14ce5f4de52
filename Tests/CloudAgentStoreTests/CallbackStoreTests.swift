import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentSQLite
import Foundation
import Testing

@Suite("Store: the callback outbox")
struct CallbackStoreTests {
    static let box = try! SecretBox(base64Key: SecretBox.generateBase64Key())

    static func delivery(
        of session: SessionID, execution: ExecutionID? = nil, due offsetMs: Int64, createdAt createdMs: Int64 = 0,
        body: String = #"{"status":"completed"}"#
    ) -> CallbackDelivery {
        CallbackDelivery(
            sessionId: session, executionId: execution ?? ExecutionID(at: Fixture.date(createdMs)), url: "https://example.com/hook",
            headers: ["Authorization": box.seal("Bearer hook-secret"), "X-Team": box.seal("platform")], body: body,
            nextAttemptAt: Fixture.date(offsetMs), createdAt: Fixture.date(createdMs)
        )
    }

    @Test(arguments: StoreBackend.allCases)
    func enqueuedDeliveryComesBackAsItWasStored(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            // The body is kept byte for byte: unicode, escapes and key order included.
            let body = #"{"b":"ünïcødé ✓ \"quoted\" \/ slash","a":null}"#
            let delivery = Self.delivery(of: session.id, due: 100, createdAt: 50, body: body)
            #expect(try await store.enqueueCallback(delivery))

            let due = try await store.dueCallbacks(before: Fixture.date(100), limit: 10)
            #expect(due == [delivery])
            #expect(due.first?.body == body)
            #expect(due.first?.attempts == 0)
            #expect(due.first?.lastError == nil)
            #expect(try due.first.map { try Self.box.open($0.headers["Authorization"]!) } == "Bearer hook-secret")
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func oneDeliveryPerExecution(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            let first = Self.delivery(of: session.id, due: 0)
            var again = Self.delivery(of: session.id, execution: first.executionId, due: 5, body: "{}")
            again.id = UUID()
            #expect(try await store.enqueueCallback(first))
            #expect(try await store.enqueueCallback(again) == false)
            #expect(try await store.enqueueCallback(first) == false)
            #expect(try await store.dueCallbacks(before: Fixture.date(1000), limit: 10) == [first])
        }
    }

    @Test(
        "an execution's input requests each have a callback of their own besides its completion's, each at most once, the request id kept",
        arguments: StoreBackend.allCases)
    func oneDeliveryPerInputRequest(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            let completion = Self.delivery(of: session.id, due: 0)
            var first = Self.delivery(of: session.id, execution: completion.executionId, due: 1, body: #"{"event":"input.requested"}"#)
            first.id = UUID()
            first.requestId = "req_1"
            var second = first
            second.id = UUID()
            second.requestId = "req_2"
            second.nextAttemptAt = Fixture.date(2)
            var repeated = first
            repeated.id = UUID()
            #expect(try await store.enqueueCallback(first))
            #expect(try await store.enqueueCallback(completion))
            #expect(try await store.enqueueCallback(second))
            #expect(try await store.enqueueCallback(repeated) == false)
            let due = try await store.dueCallbacks(before: Fixture.date(1000), limit: 10)
            #expect(due == [completion, first, second])
            #expect(due.map(\.requestId) == [nil, "req_1", "req_2"])
        }
    }

    @Test(
        "a change carries its callbacks: written in its transaction, at most one per execution, nothing when the change is refused",
        arguments: StoreBackend.allCases)
    func callbacksCommitWithTheirChange(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            let delivery = Self.delivery(of: session.id, due: 0)
            try await store.commit(
                SessionChange(
                    sessionId: session.id, events: [NewEvent(type: "execution.completed", at: Fixture.date(0))], callbacks: [delivery]
                ))
            var again = Self.delivery(of: session.id, execution: delivery.executionId, due: 0, body: "{}")
            again.id = UUID()
            try await store.commit(SessionChange(sessionId: session.id, callbacks: [again]))
            #expect(try await store.dueCallbacks(before: Fixture.date(1000), limit: 10) == [delivery])

            // A change the store refuses (its session is gone) writes none of its callbacks.
            let gone = SessionID()
            await #expect(throws: StoreError.self) {
                try await store.commit(SessionChange(sessionId: gone, callbacks: [Self.delivery(of: gone, due: 0)]))
            }
            #expect(try await store.dueCallbacks(before: Fixture.date(1000), limit: 10).count == 1)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func dueDeliveriesComeEarliestFirstUpToTheLimit(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            #expect(try await store.nextCallbackDue() == nil)
            #expect(try await store.dueCallbacks(before: Fixture.date(10_000), limit: 10).isEmpty)
            let late = Self.delivery(of: session.id, due: 300, createdAt: 1)
            let early = Self.delivery(of: session.id, due: 100, createdAt: 2)
            let middle = Self.delivery(of: session.id, due: 200, createdAt: 3)
            for delivery in [late, early, middle] { try await store.enqueueCallback(delivery) }

            #expect(try await store.nextCallbackDue() == Fixture.date(100))
            #expect(try await store.dueCallbacks(before: Fixture.date(99), limit: 10).isEmpty)
            // Due at or before the given time.
            #expect(try await store.dueCallbacks(before: Fixture.date(100), limit: 10).map(\.id) == [early.id])
            #expect(try await store.dueCallbacks(before: Fixture.date(250), limit: 10).map(\.id) == [early.id, middle.id])
            #expect(try await store.dueCallbacks(before: Fixture.date(10_000), limit: 2).map(\.id) == [early.id, middle.id])
            #expect(try await store.dueCallbacks(before: Fixture.date(10_000), limit: 10).map(\.id) == [early.id, middle.id, late.id])
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func rescheduleCountsTheAttemptAndMovesTheDueTime(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            let delivery = Self.delivery(of: session.id, due: 100)
            try await store.enqueueCallback(delivery)

            try await store.rescheduleCallback(delivery.id, nextAttemptAt: Fixture.date(2100), lastError: "HTTP 500")
            #expect(try await store.dueCallbacks(before: Fixture.date(2099), limit: 10).isEmpty)
            #expect(try await store.nextCallbackDue() == Fixture.date(2100))
            let once = try #require(try await store.dueCallbacks(before: Fixture.date(2100), limit: 10).first)
            #expect(once.attempts == 1)
            #expect(once.lastError == "HTTP 500")
            #expect(once.body == delivery.body)
            #expect(once.headers == delivery.headers)

            try await store.rescheduleCallback(delivery.id, nextAttemptAt: Fixture.date(6100), lastError: "connection refused")
            let twice = try #require(try await store.dueCallbacks(before: Fixture.date(6100), limit: 10).first)
            #expect(twice.attempts == 2)
            #expect(twice.lastError == "connection refused")
            #expect(twice.nextAttemptAt == Fixture.date(6100))
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func deliveredAndFailedDeliveriesLeaveTheOutbox(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            let delivered = Self.delivery(of: session.id, due: 100)
            let failed = Self.delivery(of: session.id, due: 200)
            let pending = Self.delivery(of: session.id, due: 300)
            for delivery in [delivered, failed, pending] { try await store.enqueueCallback(delivery) }

            #expect(try await store.markCallbackDelivered(delivered.id))
            #expect(try await store.markCallbackFailed(failed.id))
            #expect(try await store.markCallbackDelivered(delivered.id) == false)
            #expect(try await store.markCallbackFailed(failed.id) == false)
            #expect(try await store.dueCallbacks(before: Fixture.date(10_000), limit: 10).map(\.id) == [pending.id])
            #expect(try await store.nextCallbackDue() == Fixture.date(300))
            #expect(try await store.markCallbackDelivered(pending.id))
            #expect(try await store.nextCallbackDue() == nil)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func deletingTheSessionDeletesItsPendingCallbacks(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let doomed = try await store.insertFixtureSession()
            let kept = try await store.insertFixtureSession()
            let doomedDelivery = Self.delivery(of: doomed.id, due: 100)
            let keptDelivery = Self.delivery(of: kept.id, due: 200)
            try await store.enqueueCallback(doomedDelivery)
            try await store.enqueueCallback(keptDelivery)

            #expect(try await store.deleteSession(doomed.id))
            #expect(try await store.dueCallbacks(before: Fixture.date(10_000), limit: 10).map(\.id) == [keptDelivery.id])
            #expect(try await store.nextCallbackDue() == Fixture.date(200))
            #expect(try await store.markCallbackDelivered(doomedDelivery.id) == false)
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func enqueueForAnUnknownSessionIsRefused(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let unknown = SessionID()
            await #expect(throws: StoreError.sessionNotFound(unknown)) {
                try await store.enqueueCallback(Self.delivery(of: unknown, due: 0))
            }
            let next = try await store.nextCallbackDue()
            #expect(next == nil)
        }
    }
}

@Suite("Store: the callback outbox in an SQLite file")
struct SQLiteCallbackStoreTests {
    @Test func pendingDeliveriesSurviveReopeningTheFile() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.path(for: "store.sqlite")
        let session = Fixture.session()
        let delivery = CallbackStoreTests.delivery(of: session.id, due: 100)
        do {
            let store = try SQLiteSessionStore(path: path)
            try await store.insertSession(session)
            try await store.enqueueCallback(delivery)
            try await store.rescheduleCallback(delivery.id, nextAttemptAt: Fixture.date(2100), lastError: "HTTP 503")
        }
        let store = try SQLiteSessionStore(path: path)
        var expected = delivery
        expected.attempts = 1
        expected.nextAttemptAt = Fixture.date(2100)
        expected.lastError = "HTTP 503"
        #expect(try await store.dueCallbacks(before: Fixture.date(2100), limit: 10) == [expected])
        #expect(try await store.nextCallbackDue() == Fixture.date(2100))
        #expect(try await store.enqueueCallback(delivery) == false)
    }

    @Test func sealedHeaderValuesNeverReachTheFileInPlaintext() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.path(for: "store.sqlite")
        let session = Fixture.session()
        let store = try SQLiteSessionStore(path: path)
        try await store.insertSession(session)
        try await store.enqueueCallback(CallbackStoreTests.delivery(of: session.id, due: 100))
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.url.path)
        for file in files {
            let data = try Data(contentsOf: directory.url.appendingPathComponent(file))
            #expect(data.range(of: Data("hook-secret".utf8)) == nil, "plaintext header value in \(file)")
        }
    }
}
