import CloudAgentCore
import CloudAgentTestSupport
import CloudAgentPostgres
import Foundation
import Logging
import PostgresNIO
import Testing

/// Several nodes on one PostgreSQL database: claims of wake-ups and callback deliveries, the
/// change notices, the registry and the takeover of a lost node. Every test has a database of
/// its own in the shared throwaway cluster.
@Suite("Store: PostgreSQL cluster", .database)
struct PostgresClusterTests {
    // MARK: Wake-up claims

    @Test func wakeUpClaimsPartitionTheRowsUntilTheirLeaseLapses() async throws {
        try await withPostgresTestDatabase { configuration in
            // Written by a store that is the only node: the wake-ups start unclaimed.
            var dues: [Date] = []
            try await withRunningPostgresStore(configuration) { writer in
                for offset: Int64 in [400, 100, 300, 200] {
                    try await writer.insertSession(Fixture.session(), wakeUp: Fixture.date(offset))
                }
                dues = try await writer.wakeUps().map(\.dueAt)
            }
            #expect(dues == [100, 200, 300, 400].map(Fixture.date))
            try await withRunningNode(configuration, "a") { a in
                try await withRunningNode(configuration, "b") { b in
                    let horizon = Fixture.date(1_000)
                    let now = Date().truncatedToMilliseconds
                    /// What `node` claims `ms` after `now`, for a lease of 1 s.
                    func claim(_ store: PostgresSessionStore, _ node: String, at ms: Int64, limit: Int = 10) async throws -> [Date] {
                        try await store.claimWakeUps(dueBefore: horizon, now: now.adding(milliseconds: ms), node: node, leaseMs: 1_000, limit: limit)
                            .map(\.dueAt)
                    }
                    // The earliest first, up to the limit; the other node gets the rest.
                    #expect(try await claim(a, "a", at: 0, limit: 2) == [100, 200].map(Fixture.date))
                    #expect(try await claim(b, "b", at: 0) == [300, 400].map(Fixture.date))
                    // Claimed rows stay with their node while the lease lives.
                    #expect(try await claim(a, "a", at: 10) == [100, 200].map(Fixture.date))
                    // A renews its claims (until 1,500); B's lapse at 1,000.
                    #expect(try await claim(a, "a", at: 500) == [100, 200].map(Fixture.date))
                    #expect(try await claim(b, "b", at: 1_200) == [300, 400].map(Fixture.date))
                    // Once A's renewed claims lapse, B gets them too.
                    #expect(try await claim(b, "b", at: 1_600) == [100, 200, 300, 400].map(Fixture.date))
                    #expect(try await claim(a, "a", at: 1_700).isEmpty)
                    // Only what is due before the horizon.
                    let early = try await b.claimWakeUps(dueBefore: Fixture.date(200), now: now, node: "b", leaseMs: 1_000, limit: 10)
                    #expect(early.map(\.dueAt) == [Fixture.date(100)])
                }
            }
        }
    }

    @Test func aWakeUpIsClaimedForTheNodeThatWritesIt() async throws {
        try await withPostgresTestDatabase { configuration in
            try await withRunningNode(configuration, "a", wakeUpLeaseMs: 60_000) { a in
                try await withRunningNode(configuration, "b", wakeUpLeaseMs: 60_000) { b in
                    let horizon = Fixture.date(1_000_000_000_000)
                    func claim(_ store: PostgresSessionStore, _ node: String, after ms: Int64 = 0) async throws -> [SessionID] {
                        try await store.claimWakeUps(
                            dueBefore: horizon, now: Date().adding(milliseconds: ms), node: node, leaseMs: 1_000, limit: 10
                        ).map(\.sessionId)
                    }
                    let session = Fixture.session()
                    try await a.insertSession(session, wakeUp: Fixture.date(10))
                    #expect(try await claim(b, "b").isEmpty)
                    #expect(try await claim(b, "b", after: 30_000).isEmpty)
                    #expect(try await claim(a, "a") == [session.id])

                    // A change through B moves the wake-up, and B arms it now: the others get it
                    // only once the writer's claim (60 s here) has lapsed.
                    try await b.commit(SessionChange(sessionId: session.id, wakeUp: .some(Fixture.date(20))))
                    #expect(try await claim(a, "a").isEmpty)
                    #expect(try await claim(a, "a", after: 30_000).isEmpty)
                    #expect(try await claim(a, "a", after: 61_000) == [session.id])
                }
            }
        }
    }

    // MARK: Callback claims

    @Test func aDueDeliveryGoesToOneNodeWhileItsClaimLives() async throws {
        try await withPostgresTestDatabase { configuration in
            try await withRunningNode(configuration, "a") { a in
                try await withRunningNode(configuration, "b") { b in
                    let session = try await a.insertFixtureSession()
                    let delivery = CallbackStoreTests.delivery(of: session.id, due: 100)
                    #expect(try await a.enqueueCallback(delivery))
                    let before = Fixture.date(1_000)

                    #expect(try await a.dueCallbacks(before: before, limit: 10) == [delivery])
                    #expect(try await b.dueCallbacks(before: before, limit: 10).isEmpty)
                    // The claimant gets its own claims again.
                    #expect(try await a.dueCallbacks(before: before, limit: 10).map(\.id) == [delivery.id])
                    // B could deliver it only once A's claim (60 s) has run out; A at its due time.
                    let bNext = try #require(try await b.nextCallbackDue())
                    #expect(bNext >= Date().adding(milliseconds: 50_000))
                    #expect(try await a.nextCallbackDue() == Fixture.date(100))

                    // A failed attempt gives the claim up: whichever node asks next gets it.
                    try await a.rescheduleCallback(delivery.id, nextAttemptAt: Fixture.date(200), lastError: "HTTP 503")
                    #expect(try await b.nextCallbackDue() == Fixture.date(200))
                    let retried = try await b.dueCallbacks(before: before, limit: 10)
                    #expect(retried.map(\.id) == [delivery.id])
                    #expect(retried.first?.attempts == 1)
                    #expect(try await a.dueCallbacks(before: before, limit: 10).isEmpty)
                }
            }
        }
    }

    @Test func aLapsedDeliveryClaimPassesToAnotherNode() async throws {
        try await withPostgresTestDatabase { configuration in
            // A node whose claims last 50 ms, as a node that died mid-attempt leaves them.
            try await withRunningNode(configuration, "a", callbackLeaseMs: 50) { a in
                try await withRunningNode(configuration, "b") { b in
                    let session = try await a.insertFixtureSession()
                    let delivery = CallbackStoreTests.delivery(of: session.id, due: 100)
                    try await a.enqueueCallback(delivery)
                    #expect(try await a.dueCallbacks(before: Fixture.date(1_000), limit: 10).map(\.id) == [delivery.id])
                    try await waitUntil("B gets the delivery once A's claim lapsed") {
                        try await b.dueCallbacks(before: Fixture.date(1_000), limit: 10).map(\.id) == [delivery.id]
                    }
                    #expect(try await a.dueCallbacks(before: Fixture.date(1_000), limit: 10).isEmpty)
                }
            }
        }
    }

    // MARK: Change notices

    @Test func anotherNodeHearsEveryCommittedChangeButNotItsOwnNorRolledBackOnes() async throws {
        try await withPostgresTestDatabase { configuration in
            try await withRunningNode(configuration, "a") { a in
                try await withRunningNode(configuration, "b") { b in
                    let inbox = NoticeInbox()
                    let cluster = PostgresCluster(store: b, configuration: configuration, nodeId: "b", logger: quietLogger)
                    try await withRunningCluster(cluster, inbox: inbox) {
                        try await startHearing(inbox, through: a)
                        var expected: [ChangeNotice] = []

                        var record = Fixture.session()
                        record.runtime = .running(
                            RuntimeStatus.Running(
                                startedAt: Fixture.date(0), requestedAt: Fixture.date(0), cold: false, connectedAt: Fixture.date(0), hostNode: "a"))
                        let sessionId = record.id
                        let id = sessionId.rawValue
                        try await a.insertSession(record)
                        expected.append(ChangeNotice(node: "a", sessionId: id, host: "a", runtime: "running"))

                        try record.runtime.beginStopping(StopReason(rule: .operator, at: Fixture.date(1)))
                        try await a.commit(SessionChange(sessionId: record.id, session: record, events: [Fixture.event(at: 1), Fixture.event(at: 2)]))
                        expected.append(ChangeNotice(node: "a", sessionId: id, firstEventId: 1, lastEventId: 2, host: "a", runtime: "stopping"))

                        // A decision that throws writes nothing and tells nothing; nor does one
                        // without a change, nor a change of the listening node itself.
                        await #expect(throws: Refused.self) {
                            _ = try await a.update(sessionId) { (_: SessionState?) throws -> Decision<Void> in throw Refused() }
                        }
                        _ = try await a.update(sessionId) { _ in Decision() }
                        try await b.commit(SessionChange(sessionId: sessionId, events: [Fixture.event(at: 3)]))

                        // A change that leaves the record: the host is the record's, no runtime state.
                        let updated = try await a.update(sessionId) { _ in
                            Decision(change: SessionChange(sessionId: sessionId, events: [Fixture.event(at: 4)]))
                        }
                        #expect(updated.events.map(\.id) == [4])
                        expected.append(ChangeNotice(node: "a", sessionId: id, firstEventId: 4, lastEventId: 4, host: "a"))

                        // Deletions, both ways, name the deleted record's host.
                        #expect(try await a.deleteSession(sessionId))
                        expected.append(ChangeNotice(node: "a", sessionId: id, host: "a", runtime: "deleted"))
                        var other = Fixture.session()
                        other.runtime.moveHost(to: "a")
                        try await a.insertSession(other)
                        expected.append(ChangeNotice(node: "a", sessionId: other.id.rawValue, host: "a", runtime: "stopped"))
                        try await a.commit(.delete(other.id))
                        expected.append(ChangeNotice(node: "a", sessionId: other.id.rawValue, host: "a", runtime: "deleted"))

                        // Notices arrive in commit order: once the last is in, every one is.
                        let last = try #require(expected.last)
                        try await waitUntil("the last notice arrives") { await inbox.notices.contains(.changed(last)) }
                        #expect(await inbox.notices == expected.map(ClusterNotice.changed))
                    }
                }
            }
        }
    }

    @Test func aLostListeningConnectionIsMadeAgainAndThenResyncs() async throws {
        try await withPostgresTestDatabase { configuration in
            try await withRunningNode(configuration, "a") { a in
                try await withRunningNode(configuration, "b") { b in
                    let inbox = NoticeInbox()
                    let cluster = PostgresCluster(store: b, configuration: configuration, nodeId: "b", logger: quietLogger)
                    try await withRunningCluster(cluster, inbox: inbox) {
                        try await startHearing(inbox, through: a)
                        let terminated = try await withAdminConnection(configuration) { connection in
                            try await connection.query(
                                """
                                SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                WHERE datname = current_database() AND application_name = \(PostgresCluster.listenerName(of: "b"))
                                """,
                                logger: quietLogger
                            ).collect().count
                        }
                        #expect(terminated == 1)
                        try await waitUntil("the node resyncs") { await inbox.notices == [.resync] }
                        // It hears again.
                        let session = try await a.insertFixtureSession()
                        try await waitUntil("a change after the resync is heard") {
                            await inbox.notices.contains { $0 == .changed(ChangeNotice(node: "a", sessionId: session.id.rawValue, runtime: "stopped")) }
                        }
                    }
                }
            }
        }
    }

    // MARK: Registry and takeover

    @Test func theRegistryShowsEveryNodeWithItsURLAndRenewingHeartbeat() async throws {
        try await withPostgresTestDatabase { configuration in
            try await withRunningNode(configuration, "a") { a in
                try await withRunningNode(configuration, "b") { b in
                    let clusterA = PostgresCluster(store: a, configuration: configuration, nodeId: "a", heartbeatMs: 50, logger: quietLogger)
                    let clusterB = PostgresCluster(store: b, configuration: configuration, nodeId: "b", heartbeatMs: 50, logger: quietLogger)
                    #expect(clusterA.isShared && clusterA.nodeId == "a")
                    try await withRunningCluster(clusterB, advertiseURL: "http://10.0.0.2:8080") {
                        try await withRunningCluster(clusterA, advertiseURL: "http://10.0.0.1:8080") {
                            try await waitUntil("both nodes registered") { try await clusterA.nodes().map(\.id) == ["a", "b"] }
                            let first = try await clusterB.nodes()
                            #expect(first.map(\.advertiseURL) == ["http://10.0.0.1:8080", "http://10.0.0.2:8080"])
                            try await waitUntil("both heartbeats renewed") {
                                let now = try await clusterB.nodes()
                                return now.count == 2 && zip(now, first).allSatisfy { $0.heartbeatAt > $1.heartbeatAt && $0.startedAt == $1.startedAt }
                            }
                            #expect(try await clusterA.nodes().allSatisfy { $0.isLive(now: Date(), leaseMs: 5_000) })
                        }
                        // A node retired on purpose leaves the registry.
                        try await clusterA.deregister()
                        #expect(try await clusterB.nodes().map(\.id) == ["b"])
                        // A running node whose row is removed writes it again at its next beat.
                        try await clusterB.deregister()
                        try await waitUntil("B registered again") { try await clusterB.nodes().map(\.advertiseURL) == ["http://10.0.0.2:8080"] }
                    }
                }
            }
        }
    }

    @Test func aLostNodeIsTakenOverOncePerRegistration() async throws {
        try await withPostgresTestDatabase { configuration in
            try await withRunningNode(configuration, "a") { a in
                let lost = PostgresCluster(store: a, configuration: configuration, nodeId: "c", heartbeatMs: 60_000, logger: quietLogger)
                let claimants = (0..<8).map { PostgresCluster(store: a, configuration: configuration, nodeId: "n\($0)", logger: quietLogger) }
                /// Every claimant at once; how many won.
                func claimAtOnce(lostBefore: Date) async throws -> Int {
                    try await withThrowingTaskGroup(of: Bool.self) { group in
                        for claimant in claimants {
                            group.addTask { try await claimant.claimTakeover(of: "c", lostBefore: lostBefore) }
                        }
                        return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
                    }
                }
                #expect(try await claimAtOnce(lostBefore: Date()) == 0, "an unknown node is never taken over")

                var registered = try await registration(of: lost)
                // Not lost while its heartbeat is not older than the limit.
                #expect(try await claimAtOnce(lostBefore: registered.heartbeatAt) == 0)
                #expect(try await claimAtOnce(lostBefore: Date().adding(milliseconds: 1)) == 1)
                #expect(try await claimAtOnce(lostBefore: Date().adding(milliseconds: 1)) == 0)

                // Registering again starts a new registration, which can be taken over once more.
                let previous = registered
                registered = try await registration(of: lost, after: previous)
                #expect(registered.startedAt > previous.startedAt)
                #expect(try await claimAtOnce(lostBefore: Date().adding(milliseconds: 1)) == 1)
                #expect(try await claimAtOnce(lostBefore: Date().adding(milliseconds: 1)) == 0)
            }
        }
    }

    /// Runs `cluster` until it has registered (after `previous`, if given), then stops it, as a
    /// node that dies: its registration stays, its heartbeat no longer moves.
    private func registration(of cluster: PostgresCluster, after previous: NodeInfo? = nil) async throws -> NodeInfo {
        var info: NodeInfo?
        try await withRunningCluster(cluster) {
            try await waitUntil("\(cluster.nodeId) registered") {
                info = try await cluster.nodes().first { $0.id == cluster.nodeId && $0.startedAt > (previous?.startedAt ?? .distantPast) }
                return info != nil
            }
        }
        return try #require(info)
    }
}

// MARK: Helpers

private struct Refused: Error {}

private let quietLogger = Logger(label: "cloud-agent.tests.postgres-cluster", factory: { _ in SwiftLogNoOpLogHandler() })

/// The notices a cluster handed over, in order.
private actor NoticeInbox {
    private(set) var notices: [ClusterNotice] = []

    func append(_ notice: ClusterNotice) { notices.append(notice) }
    func removeAll() { notices.removeAll() }

    var changedSessions: [String] {
        notices.compactMap { if case .changed(let notice) = $0 { notice.sessionId } else { nil } }
    }
}

/// A store that is node `nodeId` of `configuration`'s database, migrated, its pool running while
/// `body` runs.
private func withRunningNode(
    _ configuration: PostgresConfiguration, _ nodeId: String, wakeUpLeaseMs: Int64 = 5_000, callbackLeaseMs: Int64 = 60_000,
    _ body: (PostgresSessionStore) async throws -> Void
) async throws {
    let store = try PostgresSessionStore(
        configuration: configuration, logger: quietLogger, nodeId: nodeId, wakeUpLeaseMs: wakeUpLeaseMs, callbackLeaseMs: callbackLeaseMs
    )
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await store.run() }
        try await store.migrate()
        try await body(store)
        group.cancelAll()
    }
}

/// `cluster` running (registered, renewing, listening into `inbox`) while `body` runs.
private func withRunningCluster(
    _ cluster: PostgresCluster, advertiseURL: String = "http://127.0.0.1:8080", inbox: NoticeInbox? = nil, _ body: () async throws -> Void
) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await cluster.run(advertiseURL: advertiseURL) { await inbox?.append($0) } }
        try await body()
        group.cancelAll()
    }
}

/// Commits new sessions through `store` until `inbox`'s cluster hears one (its LISTEN is in
/// effect), then one more, and empties the inbox once that one is in: notices arrive in commit
/// order, so nothing from before is still to come.
private func startHearing(_ inbox: NoticeInbox, through store: PostgresSessionStore) async throws {
    var probes: Set<String> = []
    let deadline = ContinuousClock.now + .seconds(20)
    while true {
        let probe = try await store.insertFixtureSession()
        probes.insert(probe.id.rawValue)
        let sent = probes
        if try await eventually(within: .milliseconds(250), { await inbox.changedSessions.contains { sent.contains($0) } }) { break }
        guard ContinuousClock.now < deadline else { throw TimedOut(what: "the cluster listens") }
    }
    let fence = try await store.insertFixtureSession()
    try await waitUntil("the fence notice arrives") { await inbox.changedSessions.contains(fence.id.rawValue) }
    await inbox.removeAll()
}

/// A connection of the test's own to the test database.
private func withAdminConnection<Result: Sendable>(
    _ configuration: PostgresConfiguration, _ body: (PostgresConnection) async throws -> Result
) async throws -> Result {
    let connection = try await PostgresConnection.connect(configuration: try configuration.connectionConfiguration(), id: 1, logger: quietLogger)
    do {
        let result = try await body(connection)
        try await connection.close()
        return result
    } catch {
        try? await connection.close()
        throw error
    }
}

/// A condition that did not come true in time.
private struct TimedOut: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting until \(what)" }
}

/// Checks `condition` every 10 ms until it holds (true) or `timeout` has passed (false).
private func eventually(within timeout: Duration, _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() { return true }
        guard ContinuousClock.now < deadline else { return false }
        try await Task.sleep(for: .milliseconds(10))
    }
}

/// Waits until `condition` holds; throws `TimedOut` after `timeout`.
private func waitUntil(_ what: String, within timeout: Duration = .seconds(15), _ condition: () async throws -> Bool) async throws {
    guard try await eventually(within: timeout, condition) else { throw TimedOut(what: what) }
}
