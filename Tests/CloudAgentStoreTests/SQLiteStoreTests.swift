import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentSQLite
import Foundation
import Testing

/// What only the SQLite backend promises: a file that outlives the process.
@Suite("Store: SQLite file")
struct SQLiteStoreTests {
    @Test func dataPersistsAcrossReopeningTheFile() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.path(for: "store.sqlite")
        let box = try SecretBox(base64Key: SecretBox.generateBase64Key())

        var session = Fixture.fullSession(box: box)
        var execution = try Fixture.running(of: session.id, at: 100, heartbeat: 110)
        let ended = try Fixture.completed(of: session.id, at: 50)
        let tokenHash = BearerToken.hash("persistent-token")
        let events: [Event]
        do {
            let store = try SQLiteSessionStore(path: path)
            try await store.saveToken(hash: tokenHash, owner: Fixture.aliceAtX, createdAt: Fixture.date(0))
            try await store.insertSession(session)
            session.executionCount = 2
            events = try await store.commit(
                SessionChange(
                    sessionId: session.id, session: session, newExecution: execution, executions: [ended],
                    events: [Fixture.event(at: 100, execution: execution.id, data: ["k": "v"]), Fixture.event(at: 120)],
                    wakeUp: .some(Fixture.date(5_000))
                ))
            #expect(try await store.recordHeartbeats([Heartbeat(executionId: execution.id, at: Fixture.date(130))]) == 1)
            execution.lastHeartbeat = Fixture.date(130)
            #expect(try await store.settingSavingIfAbsent("signing-key", value: "first") == "first")
        }

        // Reopened twice: the migrations run again without harm and everything is there.
        for _ in 0..<2 {
            let store = try SQLiteSessionStore(path: path)
            #expect(try await store.owner(forTokenHash: tokenHash) == Fixture.aliceAtX)
            #expect(try await store.session(session.id) == session)
            #expect(try await store.sessions(owner: Fixture.aliceAtX, limit: 10, after: nil) == [session])
            #expect(try await store.executions(of: session.id) == [ended, execution])
            #expect(try await store.allEvents(of: session.id) == events)
            #expect(try await store.lastEventId(of: session.id) == 2)
            #expect(try await store.wakeUps() == [WakeUp(sessionId: session.id, dueAt: Fixture.date(5_000))])
            #expect(try await store.settingSavingIfAbsent("signing-key", value: "second") == "first")
            // The one-active-execution rule holds across a reopen.
            await #expect(throws: StoreError.executionInProgress(execution.id)) {
                try await store.commit(SessionChange(sessionId: session.id, newExecution: Fixture.execution(of: session.id, at: 200)))
            }
        }

        // Event ids continue where they were.
        let store = try SQLiteSessionStore(path: path)
        let next = try await store.commit(SessionChange(sessionId: session.id, events: [Fixture.event(at: 300)]))
        #expect(next.map(\.id) == [3])
    }

    @Test func sealedSecretsNeverReachTheFileInPlaintext() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.path(for: "store.sqlite")
        let box = try SecretBox(base64Key: SecretBox.generateBase64Key())
        let secret = "plaintext-secret-\(UUID().uuidString)"
        let marker = "visible-prompt-\(UUID().uuidString)"

        var session = Fixture.fullSession(box: box, secret: secret)
        session.spec.prompt = marker
        do {
            let store = try SQLiteSessionStore(path: path)
            try await store.insertSession(session)
            session.updatedAt = Fixture.date(1_000)
            _ = try await store.commit(
                SessionChange(
                    sessionId: session.id, session: session, events: [Fixture.event(at: 1_000, data: ["note": "committed"])]
                ))

            // While the store is open (much of it is still in the write-ahead log)…
            let open = try Self.databaseBytes(at: path)
            // …the check can see stored text at all (otherwise it would prove nothing),
            #expect(open.range(of: Data(marker.utf8)) != nil)
            // but never a secret's plaintext, nor its base64.
            #expect(open.range(of: Data(secret.utf8)) == nil)
            #expect(open.range(of: Data(Data(secret.utf8).base64EncodedString().utf8)) == nil)
        }

        // And after closing (the log checkpointed into the main file).
        let closed = try Self.databaseBytes(at: path)
        #expect(closed.range(of: Data(marker.utf8)) != nil)
        #expect(closed.range(of: Data(secret.utf8)) == nil)

        // The secrets are still there, sealed.
        let reopened = try SQLiteSessionStore(path: path)
        let loaded = try #require(try await reopened.session(session.id))
        let apiKey = try #require(loaded.spec.secrets["API_KEY"])
        #expect(try box.open(apiKey) == secret)
    }

    /// The bytes of the database file and its write-ahead log, whichever exist.
    static func databaseBytes(at path: String) throws -> Data {
        var bytes = Data()
        for file in [path, path + "-wal"] where FileManager.default.fileExists(atPath: file) {
            bytes.append(try Data(contentsOf: URL(fileURLWithPath: file)))
        }
        return bytes
    }
}
