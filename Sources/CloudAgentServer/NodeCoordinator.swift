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
    let membership: any ClusterMembership
    let view: ClusterView
    let ledger: SessionLedger
    let gateway: RuntimeGateway
    let lifecycle: RuntimeLifecycle
    let heartbeatMs: Int64
    let logger: Logger
    private let advertised = AsyncStream<String>.makeStream()
    private let ready = Mutex<(done: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    init(
        membership: any ClusterMembership, view: ClusterView, ledger: SessionLedger, gateway: RuntimeGateway, lifecycle: RuntimeLifecycle,
        heartbeatMs: Int64, logger: Logger
    ) {
        self.membership = membership
        self.view = view
        self.ledger = ledger
        self.gateway = gateway
        self.lifecycle = lifecycle
        self.heartbeatMs = heartbeatMs
        self.logger = logger
    }

    /// The server listens: this node can be registered at `advertiseURL`. Returns once the
    /// registry has been read (or after a few seconds), so that recovery and the first
    /// decisions know which nodes are alive.
    func listening(advertiseURL: String) async {
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
            }
        }
    }

    // MARK: The registry

    /// Re-reads the registry every heartbeat; a node found lost has its sessions taken over
    /// (by exactly one node).
    private func watchRegistry() async {
        var reported: Set<String> = []
        while !Task.isCancelled {
            do {
                let nodes = try await membership.nodes()
                view.update(nodes)
                if nodes.contains(where: { $0.id == view.nodeId }) { markReady() }
                let now = ledger.clock.now()
                for node in nodes where node.id != view.nodeId && !node.isLive(now: now, leaseMs: view.leaseMs) {
                    if reported.insert(node.id).inserted {
                        logger.warning("node lost", metadata: ["nodeId": "\(node.id)", "lastHeartbeat": "\(Timestamp.format(node.heartbeatAt))"])
                    }
                    if try await membership.claimTakeover(of: node.id, lostBefore: now.adding(milliseconds: -view.leaseMs)) {
                        await takeOver(node.id)
                    }
                }
                for node in nodes where node.isLive(now: now, leaseMs: view.leaseMs) { reported.remove(node.id) }
            } catch {
                logger.warning("reading the node registry failed", metadata: ["error": "\(String(reflecting: error))"])
            }
            try? await Task.sleep(for: .milliseconds(heartbeatMs))
        }
    }

    /// A lost node's sessions: its interrupted stops are finished (its runtimes are asked to
    /// stop through their connection, wherever it is), its launches not yet spawned start here,
    /// and its pending auto-commits are settled here. Its running runtimes are left alone: they
    /// reconnect to another node, and the rules stop one that never does.
    func takeOver(_ lost: String) async {
        guard let sessions = try? await ledger.store.sessions(withRuntimeIn: [.starting, .running, .stopping]) else { return }
        var count = 0
        for session in sessions where session.runtime.hostNode == lost {
            count += 1
            await lifecycle.reconcile(session.id, takingOverFrom: lost)
        }
        ledger.metrics.takeovers.increment()
        logger.info("sessions of a lost node taken over", metadata: ["nodeId": "\(lost)", "count": "\(count)"])
    }

    // MARK: Notices

    func handle(_ notice: ClusterNotice) async {
        ledger.metrics.clusterNotices.increment()
        switch notice {
        case .changed(let change):
            guard let id = SessionID(rawValue: change.sessionId) else { return }
            await changed(id, change)
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

    private func changed(_ id: SessionID, _ change: ChangeNotice) async {
        if change.runtime == "deleted" {
            ledger.hub.close(id)
            gateway.close(id, telling: "session deleted")
            if change.host == view.nodeId { await lifecycle.removedByAnotherNode(id) }
            ledger.changes.changed(id)
            return
        }
        if let first = change.firstEventId, let last = change.lastEventId, ledger.hub.subscriberCount(id) > 0 {
            await publish(id, first: first, last: last)
        }
        ledger.changes.changed(id)
        if gateway.connection(for: id) != nil { await gateway.reconcile(id) }
        if change.host == view.nodeId, change.runtime != nil { await lifecycle.reconcile(id, takingOverFrom: nil) }
    }

    /// Events another node committed, read from the store and offered to this node's subscribers.
    private func publish(_ id: SessionID, first: Int64, last: Int64) async {
        do {
            let events = try await ledger.store.events(of: id, EventQuery(afterId: first - 1, limit: Int(min(last - first + 1, 10_000))))
            ledger.hub.publish(events)
        } catch {
            // The stream fills the gap from the store at the next event it sees.
            logger.warning("reading another node's events failed", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
        }
    }
}
