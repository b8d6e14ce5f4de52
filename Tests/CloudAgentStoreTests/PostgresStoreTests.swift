import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentPostgres
import Foundation
import Logging
import Testing

/// What only the PostgreSQL backend promises: `CLOUD_AGENT_DATABASE_URL` read strictly, and one
/// database shared by several nodes (stores) that start and write at once.
@Suite("Store: PostgreSQL", .database)
struct PostgresStoreTests {
    @Test func urlGivesEveryPartPercentDecoded() throws {
        let configuration = try PostgresConfiguration(url: "postgres://agent%40corp:p%40ss%3Aw%2Frd@db.internal:6543/cloud_agent?sslmode=require")
        #expect(
            configuration
                == PostgresConfiguration(
                    host: "db.internal", port: 6543, username: "agent@corp", password: "p@ss:w/rd", database: "cloud_agent", tls: .require
                ))
        // The TLS context is built from the system's trust roots.
        _ = try configuration.clientConfiguration()
    }

    @Test func urlDefaultsToPort5432WithoutTLS() throws {
        let configuration = try PostgresConfiguration(url: "postgresql://agent@localhost/agents")
        #expect(configuration == PostgresConfiguration(host: "localhost", port: 5432, username: "agent", password: nil, database: "agents"))
        #expect(try PostgresConfiguration(url: "postgres://a:b@h/d?sslmode=disable").tls == .disable)
        #expect(try PostgresConfiguration(url: "postgres://a@h/agents%20one").database == "agents one")
    }

    @Test(arguments: [
        ("sqlite:/var/lib/cloud-agent/db.sqlite", "postgres://"),
        ("postgres://user:hunter2@/db", "no host"),
        ("postgres://:hunter2@host/db", "no user"),
        ("postgres://user:hunter2@host:5432", "no database"),
        ("postgres://user:hunter2@host/db/extra", "more than one part"),
        ("postgres://user:hunter2@host/db?sslmode=verify-none", "sslmode"),
        ("postgres://user:hunter2@host/db?ssl=true", "unknown parameter ssl"),
        ("postgres://user:hunter2@host:99999/db", "port"),
        ("postgres://user:hunter2@host name/db", "not a URL"),
    ])
    func malformedURLNamesTheSettingAndTheProblemButNotThePassword(url: String, problem: String) {
        #expect {
            try PostgresConfiguration(url: url)
        } throws: { error in
            let description = String(describing: error)
            return description.hasPrefix("CLOUD_AGENT_DATABASE_URL ") && description.contains(problem) && !description.contains("hunter2")
        }
    }

    @Test func aDatabaseThatDoesNotAnswerMakesOperationsFailFastAsUnavailable() async throws {
        // Nothing listens on port 1: the pool never gets a connection.
        let store = try PostgresSessionStore(
            configuration: PostgresConfiguration(
                host: "127.0.0.1", port: 1, username: "nobody", password: "s3cret", database: "none"
            ),
            logger: {
                var quiet = Logger(label: "test")
                quiet.logLevel = .critical
                return quiet
            }())
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await store.run() }
            let started = ContinuousClock.now
            await #expect(throws: StoreError.unavailable("PostgreSQL did not answer within \(PostgresSessionStore.operationTimeout)")) {
                _ = try await store.session(SessionID())
            }
            let waited = ContinuousClock.now - started
            #expect(waited >= PostgresSessionStore.operationTimeout && waited < PostgresSessionStore.operationTimeout + .seconds(5))
            group.cancelAll()
        }
    }

    @Test("a database that stops under an open pool makes operations throw StoreError.unavailable (never the driver's error), and they succeed once it is back")
    func aDatabaseThatStopsMakesOperationsUnavailableNotDriverErrors() async throws {
        // A server of its own: stopping it must not touch the other tests' databases.
        let postgres = try await ThrowawayPostgres.start(settings: ["fsync=off"], name: "cloud-agent-store-stop")
        do {
            let configuration = PostgresConfiguration(
                host: "127.0.0.1", port: postgres.port, username: ThrowawayPostgres.superuser, password: nil, database: "postgres")
            try await withRunningPostgresStore(configuration) { store in
                let session = Fixture.session()
                try await store.insertSession(session, wakeUp: nil)
                // The pool now holds open connections; the server goes away under them.
                try await postgres.pause()
                for _ in 0..<3 {
                    do {
                        _ = try await store.session(session.id)
                        Issue.record("a read succeeded with the database stopped")
                    } catch StoreError.unavailable {
                        // The one error every caller knows: the API answers it 503.
                    } catch {
                        Issue.record("the driver's error leaked: \(String(reflecting: error))")
                    }
                }
                try await postgres.resume()
                try await eventually(within: 20, "a read to succeed once the database is back") {
                    (try? await store.session(session.id)) == session
                }
            }
        } catch {
            await postgres.shutdown(immediately: true)
            throw error
        }
        await postgres.shutdown(immediately: true)
    }

    @Test func nodesStartingAtOnceMigrateOnceAndShareTheData() async throws {
        try await withPostgresTestDatabase { configuration in
            let session = Fixture.session()
            // Four nodes start at once: each runs the migrations; the advisory lock lets one apply
            // them and the others find them applied (a second CREATE TABLE would fail).
            try await withThrowingTaskGroup(of: Void.self) { group in
                for node in 0..<4 {
                    group.addTask {
                        try await withRunningPostgresStore(configuration) { store in
                            if node == 0 { try await store.insertSession(session, wakeUp: Fixture.date(5)) }
                        }
                    }
                }
                try await group.waitForAll()
            }
            // A node started later sees what the first wrote, and event ids go on.
            try await withRunningPostgresStore(configuration) { store in
                #expect(try await store.session(session.id) == session)
                #expect(try await store.wakeUps() == [WakeUp(sessionId: session.id, dueAt: Fixture.date(5))])
                let events = try await store.commit(SessionChange(sessionId: session.id, events: [Fixture.event(at: 1), Fixture.event(at: 2)]))
                #expect(events.map(\.id) == [1, 2])
            }
            try await withRunningPostgresStore(configuration) { store in
                let events = try await store.commit(SessionChange(sessionId: session.id, events: [Fixture.event(at: 3)]))
                #expect(events.map(\.id) == [3])
            }
        }
    }

    @Test func updatesFromSeveralNodesAreSerialized() async throws {
        try await withPostgresTestDatabase { configuration in
            let session = Fixture.session()
            try await withRunningPostgresStore(configuration) { store in try await store.insertSession(session) }
            // Three nodes, each with its own connection pool, add one to the count ten times each.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<3 {
                    group.addTask {
                        try await withRunningPostgresStore(configuration) { store in
                            try await withThrowingTaskGroup(of: Void.self) { updates in
                                for _ in 0..<10 {
                                    updates.addTask {
                                        _ = try await store.update(session.id) { state in
                                            var record = try #require(state?.session)
                                            record.executionCount += 1
                                            return Decision(change: SessionChange(sessionId: record.id, session: record))
                                        }
                                    }
                                }
                                try await updates.waitForAll()
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            try await withRunningPostgresStore(configuration) { store in
                let count = try await store.session(session.id)?.executionCount
                #expect(count == 30)
            }
        }
    }

    @Test func aSecondActiveExecutionFromAnotherNodeIsRefusedWithTheActiveOne() async throws {
        try await withPostgresTestDatabase { configuration in
            let session = Fixture.session()
            let first = Fixture.execution(of: session.id, at: 10)
            try await withRunningPostgresStore(configuration) { store in
                try await store.insertSession(session)
                try await store.commit(SessionChange(sessionId: session.id, newExecution: first))
            }
            try await withRunningPostgresStore(configuration) { store in
                // Saved as a running execution rather than as a new one: the partial unique index
                // refuses it, and the refusal is the domain's error naming the active execution.
                let second = try Fixture.running(of: session.id, at: 20)
                await #expect(throws: StoreError.executionInProgress(first.id)) {
                    try await store.commit(SessionChange(sessionId: session.id, executions: [second]))
                }
                #expect(try await store.executions(of: session.id) == [first])
            }
        }
    }
}
