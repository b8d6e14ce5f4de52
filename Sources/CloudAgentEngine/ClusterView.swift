import CloudAgentCore
import CloudAgentProtocol
import Foundation
import Synchronization

/// What this node knows of the nodes sharing its store: their registrations (refreshed by the
/// `NodeCoordinator`), and from them where a session's runtime is hosted, since when runtimes
/// could be heard, and where runtimes can reconnect. A single node (SQLite, memory) knows only
/// itself: every runtime is hosted here and nothing is routed.
public final class ClusterView: Sendable {
    public let nodeId: String
    public let isShared: Bool
    /// A node whose registration was not renewed within this is lost.
    public let leaseMs: Int64
    /// The shared store's availability: no node could renew its registration while the store
    /// was away, so none is judged lost until a lease has passed since it came back.
    package let store: StoreAvailability?
    private let known = Mutex<[NodeInfo]?>(nil)

    public init(nodeId: String = "local", isShared: Bool = false, leaseMs: Int64 = 5_000, store: StoreAvailability? = nil) {
        self.nodeId = nodeId
        self.isShared = isShared
        self.leaseMs = leaseMs
        self.store = store
    }

    /// Whether `node` counts as live at `now`: renewed within the lease, or the store came back
    /// less than a lease ago (its outage stopped every renewal).
    package func isLive(_ node: NodeInfo, now: Date) -> Bool {
        if node.isLive(now: now, leaseMs: leaseMs) { return true }
        guard let back = store?.answeringSince else { return false }
        return now.milliseconds(since: back) <= leaseMs
    }

    /// A single node.
    public static let single = ClusterView()

    package func update(_ nodes: [NodeInfo]) { known.withLock { $0 = nodes } }

    /// The registrations as last read (empty before the first read, and for a single node).
    public var nodes: [NodeInfo] { known.withLock { $0 ?? [] } }

    /// True once the registry has been read.
    package var isKnown: Bool { known.withLock { $0 != nil } }

    /// The node recorded as a launch's host and a hello's connected node (nil for a single node).
    package var recordedNodeId: String? { isShared ? nodeId : nil }

    /// Where a runtime hosted by `host` stands from here.
    package enum Placement: Equatable {
        /// On this node's host (or a single node): this node signals its processes.
        case here
        /// On another live node's host: that node signals them.
        case elsewhere(String)
        /// On a node whose registration lapsed: nobody can signal its processes; its runtimes
        /// are asked to stop through their connection, and its sessions start anew elsewhere.
        case lost(String)
    }

    package func placement(ofHost host: String?, now: Date) -> Placement {
        guard isShared, let host, host != nodeId else { return .here }
        guard let node = nodes.first(where: { $0.id == host }) else { return isKnown ? .lost(host) : .elsewhere(host) }
        return isLive(node, now: now) ? .elsewhere(host) : .lost(host)
    }

    /// Since when some node has served without a break (`fallback` for a single node: when it started).
    package func availableSince(now: Date, fallback: Date) -> Date {
        guard isShared else { return fallback }
        return ClusterAvailability.since(nodes, now: now, leaseMs: leaseMs, fallback: fallback)
    }

    /// When each registered node last started.
    package var nodeStarts: [String: Date] {
        guard isShared else { return [:] }
        return Dictionary(nodes.map { ($0.id, $0.startedAt) }) { first, _ in first }
    }

    /// Lost nodes with when they were last heard of.
    package func lostNodes(now: Date) -> [String: Date] {
        guard isShared else { return [:] }
        var lost: [String: Date] = [:]
        for node in nodes where node.id != nodeId && !isLive(node, now: now) { lost[node.id] = node.heartbeatAt }
        return lost
    }

    /// The runtime route of every live node, this one first: where a runtime may reconnect.
    package func controlURLs(now: Date) -> [String] {
        guard isShared else { return [] }
        let live = nodes.filter { isLive($0, now: now) }.sorted { ($0.id == nodeId ? 0 : 1, $0.id) < ($1.id == nodeId ? 0 : 1, $1.id) }
        return live.compactMap { Self.runtimeURL(advertised: $0.advertiseURL) }
    }

    /// `http://host:port` → `ws://host:port/<runtime path>` (https → wss).
    package static func runtimeURL(advertised: String) -> String? {
        var base = advertised
        while base.hasSuffix("/") { base.removeLast() }
        if base.hasPrefix("http://") { return "ws://" + base.dropFirst(7) + RuntimeProtocol.path }
        if base.hasPrefix("https://") { return "wss://" + base.dropFirst(8) + RuntimeProtocol.path }
        return nil
    }
}
