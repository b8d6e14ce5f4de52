import CloudAgentCore
import Foundation
import Logging
import PostgresNIO

/// The nodes sharing one PostgreSQL database.
///
/// Each node keeps a row in `nodes` (its advertised URL, when it started, its last heartbeat),
/// renewed every `heartbeatMs` through the store's pool, and listens on
/// `PostgresSessionStore.changesChannel` on a connection of its own: a pooled connection would be
/// handed to queries, and a LISTEN only hears while its connection stays open. The notices are
/// sent by the stores inside the changes' transactions, so a node hears of committed changes
/// only, in commit order.
public final class PostgresCluster: ClusterMembership {
    public let nodeId: String
    public var isShared: Bool { true }

    private let store: PostgresSessionStore
    private let configuration: PostgresConfiguration
    private let heartbeatMs: Int64
    private let logger: Logger

    /// The wait before making a lost listening connection again: short at first (a restarted
    /// database is back quickly), doubled after each failure, capped so that a node never stays
    /// deaf for long once the database answers.
    static let firstReconnectDelay: Duration = .milliseconds(100)
    static let maxReconnectDelay: Duration = .seconds(2)

    public init(store: PostgresSessionStore, configuration: PostgresConfiguration, nodeId: String, heartbeatMs: Int64 = 1_000, logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.nodeId = nodeId
        self.heartbeatMs = max(1, heartbeatMs)
        self.logger = logger
    }

    // MARK: Membership

    /// Registers this node, then renews its heartbeat and hands over the other nodes' notices
    /// until cancelled. A registration that fails at the start is thrown (the node would be
    /// invisible to the others); later failures are logged and retried.
    public func run(advertiseURL: String, notices: @escaping @Sendable (ClusterNotice) async -> Void) async throws {
        try await register(advertiseURL: advertiseURL)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.keepRenewing(advertiseURL: advertiseURL) }
            group.addTask { await self.keepListening(notices) }
            // Both run until cancelled.
            await group.waitForAll()
        }
    }

    public func nodes() async throws -> [NodeInfo] {
        try await store.query("SELECT id, advertise_url, started_at, heartbeat_at FROM nodes ORDER BY id").map { row in
            let (id, url, startedAt, heartbeatAt) = try row.decode((String, String, Int64, Int64).self)
            return NodeInfo(
                id: id, advertiseURL: url, startedAt: Date(millisecondsSince1970: startedAt), heartbeatAt: Date(millisecondsSince1970: heartbeatAt)
            )
        }
    }

    /// One statement: of the callers that see the node lost, the one whose update flips
    /// `taken_over` wins; the others find it set (the row lock orders them).
    public func claimTakeover(of node: String, lostBefore: Date) async throws -> Bool {
        try await !store.query(
            """
            UPDATE nodes SET taken_over = TRUE
            WHERE id = \(node) AND NOT taken_over AND heartbeat_at < \(lostBefore.millisecondsSince1970)
            RETURNING id
            """
        ).isEmpty
    }

    /// Removes this node from the registry: for a node retired on purpose, after `run` ended
    /// (a running node would register again at its next heartbeat).
    public func deregister() async throws {
        try await store.query("DELETE FROM nodes WHERE id = \(nodeId)")
    }

    // MARK: Registration

    /// This node's row, started and renewed now; a new registration may be taken over again.
    private func register(advertiseURL: String) async throws {
        let now = Date().millisecondsSince1970
        try await store.query(
            """
            INSERT INTO nodes (id, advertise_url, started_at, heartbeat_at, taken_over)
            VALUES (\(nodeId), \(advertiseURL), \(now), \(now), FALSE)
            ON CONFLICT (id) DO UPDATE SET advertise_url = excluded.advertise_url, started_at = excluded.started_at,
                heartbeat_at = excluded.heartbeat_at, taken_over = FALSE
            """
        )
    }

    /// Renews the heartbeat every `heartbeatMs` until cancelled. A failed renewal is logged and
    /// tried again at the next beat: a database that is away for a while must not stop the node.
    private func keepRenewing(advertiseURL: String) async {
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: .milliseconds(heartbeatMs))
            } catch {
                return
            }
            do {
                try await renew(advertiseURL: advertiseURL)
            } catch {
                if Task.isCancelled { return }
                logger.warning("renewing this node's registration failed; retrying", metadata: ["node": "\(nodeId)", "error": "\(error)"])
            }
        }
    }

    /// Moves the heartbeat forward; a row that is gone (removed by hand while the node runs) is
    /// written again, so that a live node never drops out of the registry.
    private func renew(advertiseURL: String) async throws {
        let now = Date().millisecondsSince1970
        let renewed = try await store.query("UPDATE nodes SET heartbeat_at = GREATEST(heartbeat_at, \(now)) WHERE id = \(nodeId) RETURNING 1")
        if renewed.isEmpty {
            logger.warning("this node's registration was gone; registering again", metadata: ["node": "\(nodeId)"])
            try await register(advertiseURL: advertiseURL)
        }
    }

    // MARK: Listening

    /// The `application_name` of a node's listening connection: an operator sees in
    /// `pg_stat_activity` which backend listens for which node.
    public static func listenerName(of node: String) -> String { "cloud-agent-listener:\(node)" }

    /// The listening connection was lost (its notifications ended or it stopped answering).
    struct ListenerLost: Error, CustomStringConvertible {
        var description: String
    }

    /// Listens until cancelled, making a lost connection again after a capped backoff; every
    /// LISTEN after the first is followed by `.resync`, since notices may have been missed.
    private func keepListening(_ notices: @escaping @Sendable (ClusterNotice) async -> Void) async {
        var delay = Self.firstReconnectDelay
        var listenedBefore = false
        var connectionId = 0
        while !Task.isCancelled {
            connectionId += 1
            do {
                try await listenOnce(connectionId: connectionId, notices) {
                    if listenedBefore { await notices(.resync) }
                    listenedBefore = true
                    delay = Self.firstReconnectDelay
                }
            } catch {
                if Task.isCancelled { return }
                logger.warning(
                    "listening for other nodes' changes failed; listening again",
                    metadata: ["node": "\(nodeId)", "error": "\(error)", "retryIn": "\(delay)"]
                )
            }
            do {
                try await Task.sleep(for: delay)
            } catch {
                return
            }
            delay = min(delay * 2, Self.maxReconnectDelay)
        }
    }

    /// One listening connection, from connecting to its loss (thrown) or the task's cancellation
    /// (returns); `listening` runs once the LISTEN is in effect, before any notice is handed over.
    private func listenOnce(
        connectionId: Int, _ notices: @escaping @Sendable (ClusterNotice) async -> Void, listening: () async -> Void
    ) async throws {
        var connectionConfiguration = try configuration.connectionConfiguration()
        connectionConfiguration.options.additionalStartupParameters.append(("application_name", Self.listenerName(of: nodeId)))
        let connection = try await PostgresConnection.connect(configuration: connectionConfiguration, id: connectionId, logger: logger)
        do {
            // Cancellation closes the connection at once: a query waiting on a connection that
            // died silently would otherwise hold the node's shutdown.
            try await withTaskCancellationHandler {
                try await connection.listen(on: PostgresSessionStore.changesChannel) { sequence in
                    await listening()
                    try await self.consume(sequence, on: connection, notices)
                }
            } onCancel: {
                // The non-async close: it starts closing and returns at once.
                _ = connection.close() as EventLoopFuture<Void>
            }
        } catch {
            try? await connection.close()
            throw error
        }
        try? await connection.close()
    }

    /// Hands the notifications over in arrival order while checking that the connection answers:
    /// a connection that died silently (no reset ever reaches this host) would otherwise keep the
    /// node deaf for good. Returns when cancelled, throws when the connection is lost.
    private func consume(
        _ sequence: PostgresNotificationSequence, on connection: PostgresConnection, _ notices: @escaping @Sendable (ClusterNotice) async -> Void
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for try await notification in sequence { await self.deliver(notification.payload, to: notices) }
            }
            group.addTask { try await self.keepChecking(connection) }
            defer { group.cancelAll() }
            _ = try await group.next()
        }
        if !Task.isCancelled { throw ListenerLost(description: "the notifications ended") }
    }

    /// Another node's notice goes to `notices`; this node's own are skipped (it acted on its
    /// changes as it made them), and a payload that does not read is logged and dropped.
    private func deliver(_ payload: String, to notices: @Sendable (ClusterNotice) async -> Void) async {
        guard let notice = ChangeNotice(payload: payload) else {
            logger.warning("dropped a change notice that does not read", metadata: ["node": "\(nodeId)", "bytes": "\(payload.utf8.count)"])
            return
        }
        guard notice.node != nodeId else { return }
        await notices(.changed(notice))
    }

    /// Asks the connection for an answer every heartbeat; throws (having closed it) when one does
    /// not come within the store's operation timeout.
    private func keepChecking(_ connection: PostgresConnection) async throws {
        while true {
            try await Task.sleep(for: .milliseconds(heartbeatMs))
            do {
                try await withDeadline(
                    PostgresSessionStore.operationTimeout,
                    onTimeout: {
                        ListenerLost(description: "the listening connection did not answer within \(PostgresSessionStore.operationTimeout)")
                    }
                ) {
                    try await connection.run("SELECT 1", self.logger)
                }
            } catch {
                // The non-async close: it starts closing and returns at once.
                _ = connection.close() as EventLoopFuture<Void>
                throw error
            }
        }
    }
}
