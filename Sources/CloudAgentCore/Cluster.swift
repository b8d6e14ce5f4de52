import Foundation

/// A control-plane node as the registry knows it (several nodes on one PostgreSQL database).
public struct NodeInfo: Sendable, Equatable {
    /// Stable across restarts (kept in the node's data directory).
    public var id: String
    /// Where runtimes and other nodes reach it: `http://host:port`.
    public var advertiseURL: String
    public var startedAt: Date
    /// When it last renewed its registration.
    public var heartbeatAt: Date

    public init(id: String, advertiseURL: String, startedAt: Date, heartbeatAt: Date) {
        self.id = id
        self.advertiseURL = advertiseURL
        self.startedAt = startedAt
        self.heartbeatAt = heartbeatAt
    }

    /// Live when its registration was renewed within `leaseMs` of `now`.
    public func isLive(now: Date, leaseMs: Int64) -> Bool { now.milliseconds(since: heartbeatAt) <= leaseMs }
}

/// What a committed change tells the other nodes. It is sent inside the change's transaction
/// (PostgreSQL `pg_notify`), so it is delivered once the change commits and never for a change
/// that rolled back; receivers read what it names from the store.
public struct ChangeNotice: Sendable, Equatable, Codable {
    /// The node that committed the change.
    public var node: String
    public var sessionId: String
    /// The ids of the events the change appended (first and last), when it appended any.
    public var firstEventId: Int64?
    public var lastEventId: Int64?
    /// The session's runtime host node after the change.
    public var host: String?
    /// The runtime's state after the change (`starting` … `stopped`), `deleted` when the
    /// change deleted the session, nil when the change did not touch the session record.
    public var runtime: String?

    public init(node: String, sessionId: String, firstEventId: Int64? = nil, lastEventId: Int64? = nil, host: String? = nil, runtime: String? = nil) {
        self.node = node
        self.sessionId = sessionId
        self.firstEventId = firstEventId
        self.lastEventId = lastEventId
        self.host = host
        self.runtime = runtime
    }

    enum CodingKeys: String, CodingKey {
        case node = "n", sessionId = "s", firstEventId = "f", lastEventId = "e", host = "h", runtime = "r"
    }

    /// The notice for a committed change: `record` is the session as the change left it (nil
    /// when the change did not touch the record), `previous` the record before (a deletion's host).
    public init(node: String, change: SessionChange, events: [Event], record: SessionRecord?, previous: SessionRecord? = nil) {
        self.init(
            node: node, sessionId: change.sessionId.rawValue, firstEventId: events.first?.id, lastEventId: events.last?.id,
            host: (record ?? previous)?.runtime.hostNode,
            runtime: change.deletesSession ? "deleted" : record?.runtime.state.rawValue
        )
    }

    /// The compact JSON a notification carries (well below PostgreSQL's 8000-byte payload limit).
    public var payload: String {
        let data = (try? JSONEncoder().encode(self)) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    public init?(payload: String) {
        guard let notice = try? JSONDecoder().decode(ChangeNotice.self, from: Data(payload.utf8)) else { return nil }
        self = notice
    }
}

/// What the cluster tells a node.
public enum ClusterNotice: Sendable, Equatable {
    /// Another node committed a change.
    case changed(ChangeNotice)
    /// Notices may have been missed (the listening connection was lost and is back): a node
    /// re-reads what it holds (its runtimes' connections, its streams).
    case resync
}

/// The nodes sharing one database: each registers itself and keeps its registration alive,
/// and hears of the others' changes. A single node (SQLite, memory) is `SingleNode`.
public protocol ClusterMembership: Sendable {
    /// This node's id.
    var nodeId: String { get }
    /// True when other nodes may share the store.
    var isShared: Bool { get }
    /// Registers this node (its advertised URL, started now), renews the registration every
    /// `heartbeatMs`, and hands every notice of another node's change to `notices`, in commit
    /// order, until cancelled. A lost listening connection is made again, then `.resync`.
    func run(advertiseURL: String, notices: @escaping @Sendable (ClusterNotice) async -> Void) async throws
    /// Every registered node with its last renewal (live and lost ones).
    func nodes() async throws -> [NodeInfo]
    /// Claims the takeover of a lost node's sessions: true for exactly one caller per loss (a
    /// node registering again starts a new one).
    func claimTakeover(of node: String, lostBefore: Date) async throws -> Bool
}

/// One node on its own store: no registry, no notices.
public struct SingleNode: ClusterMembership {
    public let nodeId: String
    public var isShared: Bool { false }

    public init(nodeId: String = "local") { self.nodeId = nodeId }

    public func run(advertiseURL: String, notices: @escaping @Sendable (ClusterNotice) async -> Void) async throws {
        while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
    }

    public func nodes() async throws -> [NodeInfo] { [] }
    public func claimTakeover(of node: String, lostBefore: Date) async throws -> Bool { false }
}

/// When the cluster has been able to hear runtimes without a break, up to `now`: the start of
/// the continuous span covered by some live node (each node covers from its start to its last
/// renewal plus the lease). Downtime before it never counts against a runtime.
public enum ClusterAvailability {
    public static func since(_ nodes: [NodeInfo], now: Date, leaseMs: Int64, fallback: Date) -> Date {
        var spans = nodes.map { (start: $0.startedAt, end: $0.heartbeatAt.adding(milliseconds: leaseMs)) }
            .filter { $0.start <= now }
            .sorted { $0.end > $1.end }
        guard let first = spans.first, first.end >= now else { return fallback }
        var since = first.start
        spans.removeFirst()
        // Walk back: any span that reaches into the covered part extends it further back.
        var changed = true
        while changed {
            changed = false
            for (index, span) in spans.enumerated() where span.end >= since && span.start < since {
                since = span.start
                spans.remove(at: index)
                changed = true
                break
            }
        }
        return since
    }
}
