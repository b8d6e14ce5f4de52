import CloudAgentCore
import Foundation
import Logging
import Prometheus
import ServiceLifecycle
import Synchronization

/// This node among the nodes sharing its store. Once the server listens it registers the
/// node's advertised URL and keeps the registration alive (`ClusterMembership`), re-reads the
/// registry every heartbeat (`ClusterView`), takes over the sessions of a node that was lost,
/// and acts on every change another node commits:
/// - the session's waiters are woken, and its stream subscribers here read the new events
///   from the store (notify, then read: no gap, and the stream drops any repeat);
/// - a runtime connected here is sent what the change asks of it (outbox rows, a shutdown);
/// - a runtime hosted here is launched, stopped or auto-committed as the change asks.
/// A single node has nothing to do here.
public final class NodeCoordinator: Service, Sendable {
    package let membership: any ClusterMembership
    package let view: ClusterView
    package let ledger: SessionLedger
    package let gateway: RuntimeGateway
    package let lifecycle: RuntimeLifecycle
    /// How the lifecycle's steps record what they find.
    package let performer: Engine
    package let heartbeatMs: Int64
    package let logger: Logger
    private let advertised = AsyncStream<String>.makeStream()
    private let ready = Mutex<(done: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))
    /// Other nodes' changes not acted on yet, merged per session (`Backlog`).
    private let backlog = Mutex<[SessionID: Backlog]>([:])
    /// Sessions whose backlog needs a drain (one drain per session at a time).
    private let drains = AsyncStream<SessionID>.makeStream()

    package init(
        membership: any ClusterMembership, view: ClusterView, ledger: SessionLedger, gateway: RuntimeGateway, lifecycle: RuntimeLifecycle,
        performer: Engine, heartbeatMs: Int64, logger: Logger
    ) {
        self.membership = membership
        self.view = view
        self.ledger = ledger
        self.gateway = gateway
        self.lifecycle = lifecycle
        self.performer = performer
        self.heartbeatMs = heartbeatMs
        self.logger = logger
    }

    /// The server listens: this node can be registered at `advertiseURL`. Returns once the
    /// registry has been read (or after a few seconds), so that recovery and the first
    /// decisions know which nodes are alive.
    package func listening(advertiseURL: String) async {
        guard view.isShared else { return }
        advertised.continuation.yield(advertiseURL)
        advertised.continuation.finish()
        let timeout = Task { [self] in
            try? await Task.sleep(for: .seconds(5))
            markReady()
        }
        await withCheckedContinuation { continuation in
            let resumeNow = ready.withLock { state -> Bool in
                if state.done { return true }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
        timeout.cancel()
    }

    private func markReady() {
        let waiters = ready.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.done = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    public func run() async throws {
        guard view.isShared else {
            try? await gracefulShutdown()
            return
        }
        var urls = advertised.stream.makeAsyncIterator()
        guard let advertiseURL = await urls.next() else { return }
        logger.info("node registering", metadata: ["nodeId": "\(view.nodeId)", "advertiseURL": "\(advertiseURL)"])
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask { [self] in
                    do {
                        try await membership.run(advertiseURL: advertiseURL) { notice in await self.handle(notice) }
                    } catch {
                        if !Task.isCancelled { logger.error("cluster membership ended", metadata: ["error": "\(String(reflecting: error))"]) }
                    }
                }
                group.addTask { [self] in await watchRegistry() }
                group.addTask { [self] in
                    await withDiscardingTaskGroup { sessions in
                        for await id in drains.stream { sessions.addTask { await self.drain(id) } }
                    }
                }
            }
        }
        drains.continuation.finish()
    }

    // MARK: The registry

    /// Re-reads the registry every heartbeat; a node found lost has its sessions taken over
    /// (by exactly one node).
    private func watchRegistry() async {
        var reported: Set<String> = []
        // Until this node's own registration shows, the registry is read again soon rather than
        // a heartbeat later: the server's start waits for it (`listening`).
        var seenSelf = false
        // The live nodes' routes as the runtimes connected here were last told them.
        var told: [String] = []
        while !Task.isCancelled {
            do {
                let nodes = try await membership.nodes()
                view.update(nodes)
                if !seenSelf, nodes.contains(where: { $0.id == view.nodeId }) {
                    seenSelf = true
                    markReady()
                }
                let now = ledger.clock.now()
                let routes = view.controlURLs(now: now)
                if seenSelf, routes != told, !routes.isEmpty {
                    told = routes
                    logger.info(
                        "live nodes changed; telling the runtimes connected here",
                        metadata: [
                            "routes": "\(routes)", "runtimes": "\(gateway.connectedSessions.count)",
                        ])
                    gateway.tellNodes(routes)
                }
                for node in nodes where node.id != view.nodeId && !view.isLive(node, now: now) {
                    if reported.insert(node.id).inserted {
                        logger.warning("node lost", metadata: ["nodeId": "\(node.id)", "lastHeartbeat": "\(Timestamp.format(node.heartbeatAt))"])
                    }
                    if try await membership.claimTakeover(of: node.id, lostBefore: now.adding(milliseconds: -view.leaseMs)) {
                        await takeOver(node.id)
                    }
                }
                for node in nodes where view.isLive(node, now: now) { reported.remove(node.id) }
            } catch {
                logger.warning("reading the node registry failed", metadata: ["error": "\(String(reflecting: error))"])
            }
            try? await Task.sleep(for: .milliseconds(seenSelf ? heartbeatMs : min(heartbeatMs, 50)))
        }
    }

    /// A lost node's sessions: its interrupted stops are finished (its runtimes are asked to
    /// stop through their connection, wherever it is), its launches not yet spawned start here,
    /// and its pending auto-commits are settled here. Its running runtimes are left alone: they
    /// reconnect to another node, and the rules stop one that never does.
    package func takeOver(_ lost: String) async {
        guard let sessions = try? await ledger.store.sessions(withRuntimeIn: [.starting, .running, .stopping]) else { return }
        var count = 0
        for session in sessions where session.runtime.hostNode == lost {
            count += 1
            await lifecycle.reconcile(session.id, takingOverFrom: lost, engine: performer)
        }
        ledger.metrics.takeovers.increment()
        logger.info("sessions of a lost node taken over", metadata: ["nodeId": "\(lost)", "count": "\(count)"])
    }

    // MARK: Notices

    package func handle(_ notice: ClusterNotice) async {
        ledger.metrics.clusterNotices.increment()
        switch notice {
        case .changed(let change):
            guard let id = SessionID(rawValue: change.sessionId) else { return }
            // Merged into the session's backlog; a drain of its own acts on it. The listener goes
            // on at once: a burst of one session's notices costs one read of its new events, and
            // a slow session never holds up another's.
            let start = backlog.withLock { sessions -> Bool in
                var entry = sessions[id] ?? Backlog()
                entry.merge(change, here: view.nodeId)
                let start = !entry.draining
                entry.draining = true
                sessions[id] = entry
                return start
            }
            if start { drains.continuation.yield(id) }
        case .resync:
            logger.info("cluster notices resumed; re-reading what this node holds")
            for id in gateway.connectedSessions { await gateway.reconcile(id) }
            for id in ledger.hub.subscribedSessions {
                ledger.changes.changed(id)
                // Events committed while notices were lost: the stream fills any gap before
                // the first one it is offered.
                guard let last = try? await ledger.store.lastEventId(of: id) else { continue }
                let first = (ledger.hub.highestPublished(id) ?? last - 1) + 1
                if last >= first { await publish(id, first: first, last: last) }
            }
        }
    }

    /// Acts on a session's backlog until it is empty (what arrives meanwhile is taken by the
    /// next round), then ends: the next notice starts another drain.
    private func drain(_ id: SessionID) async {
        while true {
            let work = backlog.withLock { sessions -> Backlog? in
                guard let entry = sessions[id], entry.hasWork else {
                    sessions[id] = nil
                    return nil
                }
                sessions[id] = Backlog(draining: true)
                return entry
            }
            guard let work else { return }
            await changed(id, work)
        }
    }

    private func changed(_ id: SessionID, _ change: Backlog) async {
        if change.deleted {
            ledger.hub.close(id)
            gateway.close(id, telling: "session deleted")
            if change.deletedHere { await lifecycle.removedByAnotherNode(id) }
            ledger.changes.changed(id)
            return
        }
        if let first = change.firstEventId, let last = change.lastEventId, ledger.hub.subscriberCount(id) > 0 {
            await publish(id, first: first, last: last)
        }
        ledger.changes.changed(id)
        if gateway.connection(for: id) != nil { await gateway.reconcile(id) }
        if change.runtimeHere { await lifecycle.reconcile(id, takingOverFrom: nil, engine: performer) }
    }

    /// Events another node committed, read from the store (a page of at most 10,000 at a time)
    /// and offered to this node's subscribers.
    private func publish(_ id: SessionID, first: Int64, last: Int64) async {
        var next = first
        while next <= last {
            do {
                let events = try await ledger.store.events(of: id, EventQuery(afterId: next - 1, limit: Int(min(last - next + 1, 10_000))))
                guard let highest = events.last?.id else { return }
                ledger.hub.publish(events)
                next = highest + 1
            } catch {
                // The stream fills the gap from the store at the next event it sees.
                logger.warning("reading another node's events failed", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
                return
            }
        }
    }

    /// One session's notices from other nodes not acted on yet, merged: their events as one
    /// range, whether a runtime hosted here was touched, whether the session was deleted.
    package struct Backlog: Sendable {
        var firstEventId: Int64?
        var lastEventId: Int64?
        /// A notice named a runtime state and this node as the host.
        var runtimeHere = false
        var deleted = false
        /// Deleted while its runtime was hosted here (its processes and files are this node's to remove).
        var deletedHere = false
        /// A drain is running (or about to) for this session.
        var draining = false
        /// A notice was merged since the drain last took the backlog.
        var hasWork = false

        mutating func merge(_ change: ChangeNotice, here node: String) {
            hasWork = true
            if change.runtime == "deleted" {
                deleted = true
                if change.host == node { deletedHere = true }
                return
            }
            if let first = change.firstEventId, let last = change.lastEventId {
                firstEventId = min(firstEventId ?? first, first)
                lastEventId = max(lastEventId ?? last, last)
            }
            if change.host == node, change.runtime != nil { runtimeHere = true }
        }
    }
}
