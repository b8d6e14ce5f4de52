import CloudAgentCore
import CloudAgentSandbox
import Foundation
import Logging
import Synchronization

/// Runtimes coming and going on this host: capacity, launching (with a cold start's restore),
/// stopping, deaths, and recovery after a control-plane start. Every step that takes time runs
/// outside any lock; what it finds is decided and recorded by a `SessionReducer` function in
/// one transaction, so a session deleted or stopped meanwhile is noticed there and the step's
/// work undone (a process discarded, files removed).
public final class RuntimeLifecycle: Sendable {
    package let ledger: SessionLedger
    package let host: any RuntimeHost
    package let slots: RuntimeSlots
    package let secretBox: SecretBox
    package let connections: RuntimeConnections
    package let logger: Logger
    /// Launches and stops under way here: a notice repeating one while it runs is ignored.
    private let launches = Mutex<Set<SessionID>>([])
    private let stops = Mutex<Set<SessionID>>([])

    package init(ledger: SessionLedger, host: any RuntimeHost, maxRuntimes: Int, secretBox: SecretBox, connections: RuntimeConnections, logger: Logger) {
        self.ledger = ledger
        self.host = host
        self.slots = RuntimeSlots(limit: maxRuntimes)
        self.secretBox = secretBox
        self.connections = connections
        self.logger = logger
    }

    package var timing: Timing { ledger.timing }

    package func workspaceRequest(id: SessionID, spec: SessionSpec, workBranch: String?) throws -> WorkspaceRequest {
        try WorkspaceRequest(session: id, spec: spec, workBranch: workBranch, opening: secretBox)
    }

    // MARK: Capacity

    /// Capacity is decided here, and only here. When `needed`, a start for `id` is admitted
    /// (`admit`: a slot is free or will be, else an idle runtime is evicted, else 503); then
    /// `body` runs — the decision that wants the start — and the admission is withdrawn unless
    /// the start goes ahead: when `body` throws, or what it decided starts no runtime (`starts`).
    @discardableResult
    package func admitting<Value>(
        _ id: SessionID, if needed: Bool = true, engine: Engine, starts: (Value) -> Bool = { _ in true }, _ body: () async throws -> Value
    ) async throws -> Value {
        guard needed else { return try await body() }
        try await admit(id, engine: engine)
        let value: Value
        do {
            value = try await body()
        } catch {
            await slots.withdraw(id)
            throw error
        }
        if !starts(value) { await slots.withdraw(id) }
        return value
    }

    /// Admits one more runtime start for `id` (see `RuntimeSlots`). When every slot is held by a
    /// runtime that is not stopping, one is evicted — the victim chosen by `CapacityPolicy.victim`
    /// (running, no accepted execution, no pending auto-commit, the oldest last activity) and
    /// stopped in a transaction of its own, so that a message accepted meanwhile saves it (the
    /// next victim is tried) — and the start waits for its slot in its launch, not here. When
    /// every runtime is busy: `runtimeUnavailable` (503).
    package func admit(_ id: SessionID, engine: Engine) async throws(SessionError) {
        for _ in 0..<4 {
            guard case .full(let holders) = await slots.admit(id) else { return }
            var holding: [SessionRecord] = []
            for holder in holders where holder != id {
                if let session = try? await ledger.store.session(holder) { holding.append(session) }
            }
            let reason = "capacity: a runtime slot was needed"
            guard await evictLeastRecentlyActive(among: holding, for: id, because: reason, engine: engine) != nil else { break }
        }
        logger.warning("no runtime slot free", metadata: ["sessionId": "\(id)", "maxRuntimes": "\(slots.limit)"])
        throw .runtimeUnavailable("all \(slots.limit) runtimes are busy; retry later")
    }

    /// Makes room in `owner`'s quota (`CLOUD_AGENT_MAX_RUNTIMES_PER_USER`) for a runtime start
    /// of session `id`: while the owner's other sessions with a runtime starting or running are
    /// at the limit, their least recently active idle runtime is evicted (chosen by
    /// `CapacityPolicy.victim` among that owner's runtimes only; another user's are never
    /// touched), each in a transaction of its own that checks again. None idle: 429
    /// `QUOTA_EXCEEDED`. The start's own transaction counts again under the owner's lock, so a
    /// start that raced another is refused there.
    package func makeRoomInQuota(for id: SessionID, owner: Owner, engine: Engine) async throws(SessionError) {
        guard let limit = ledger.maxRuntimesPerUser else { return }
        for _ in 0..<4 {
            let live: [SessionRecord]
            do { live = try await ledger.store.liveSessions(of: owner).filter { $0.id != id } } catch { return }
            guard live.count >= limit else { return }
            let reason = "quota: \(owner.user) is at \(limit) runtimes and needed one"
            guard let victim = await evictLeastRecentlyActive(among: live, for: id, because: reason, engine: engine) else {
                logger.info("runtime quota reached", metadata: ["sessionId": "\(id)", "user": "\(owner)", "limit": "\(limit)"])
                throw .limitReached(
                    .runtimesPerUser, limit: Double(limit),
                    "\(owner.user) already has \(live.count) runtimes starting or running (at most \(limit) per user) and none of them is idle; retry once one is"
                )
            }
            logger.info("runtime evicted for the user's quota", metadata: ["sessionId": "\(victim)", "rule": "evicted", "for": "\(id)", "limit": "\(limit)"])
        }
    }

    /// Evicts, for session `id`, the least recently active idle runtime among `sessions`
    /// (`CapacityPolicy.victim`), each try in a transaction of its own that checks again (a
    /// message accepted since saves a victim, and the next is tried): the victim, or nil when
    /// none could be evicted.
    private func evictLeastRecentlyActive(among sessions: [SessionRecord], for id: SessionID, because why: String, engine: Engine) async -> SessionID? {
        var candidates: [CapacityPolicy.Candidate] = []
        for session in sessions where session.id != id && CapacityPolicy.Candidate(session: session, latestExecution: nil).evictable {
            candidates.append(CapacityPolicy.Candidate(session: session, latestExecution: try? await ledger.store.latestExecution(of: session.id)))
        }
        while let victim = CapacityPolicy.victim(candidates: candidates) {
            candidates.removeAll { $0.session.id == victim }
            let committed = try? await engine.perform(victim) { state, context in
                SessionReducer.evict(state, for: id, because: why, context: context)
            }
            if committed?.output == true { return victim }
        }
        return nil
    }

    /// Whether a start of a runtime last hosted by `hostNode` launches on this host (else on
    /// that node's, which is alive: it admits the start by its own capacity).
    package func startsHere(hostNode: String?) -> Bool {
        if case .elsewhere = ledger.cluster.placement(ofHost: hostNode, now: ledger.clock.now()) { return false }
        return true
    }

    // MARK: Launching

    /// The start requested at `requestedAt`, as a background job.
    package func launchInBackground(_ id: SessionID, requestedAt: Date, restore: Bool, engine: Engine) {
        host.enqueue { [self] in await launch(id, requestedAt: requestedAt, restore: restore, engine: engine) }
    }

    /// Whether a session still wants the start requested at `requestedAt`.
    private static func wants(_ session: SessionRecord?, _ requestedAt: Date) -> Bool {
        guard let runtime = session?.runtime else { return false }
        return runtime.state == .starting && runtime.process == nil && runtime.requestedAt == requestedAt
    }

    /// A start: the workspace restored (a cold start: the slow part, with no lock held, so the
    /// session's interrupt, PATCH and DELETE and every other session's timers go on meanwhile;
    /// the pending timeout counts from the launch), a slot taken, the process spawned, and the
    /// launch recorded if the session still wants it (`SessionReducer.launched`).
    package func launch(_ id: SessionID, requestedAt: Date, restore: Bool, engine: Engine) async {
        guard launches.withLock({ $0.insert(id).inserted }) else { return }
        defer { _ = launches.withLock { $0.remove(id) } }
        let session: SessionRecord?
        do { session = try await ledger.store.session(id) } catch {
            logger.error("cold start failed: the store did not answer", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
            await slots.withdraw(id)
            return
        }
        guard let session, Self.wants(session, requestedAt) else {
            await slots.withdraw(id)
            if session == nil { host.removeWorkspace(id) }
            return
        }
        // A runtime whose last host is another live node starts there, with its workspace:
        // that node launches it when it hears of the change.
        if case .elsewhere(let node) = ledger.cluster.placement(ofHost: session.runtime.hostNode, now: ledger.clock.now()) {
            await slots.withdraw(id)
            logger.debug("start left to the runtime's host node", metadata: ["sessionId": "\(id)", "hostNode": "\(node)"])
            return
        }
        var failures: [NewEvent] = []
        do {
            let request = try workspaceRequest(id: id, spec: session.spec, workBranch: session.workBranch)
            if restore {
                failures = await host.restoreWorkspace(request).map { failure in
                    NewEvent(
                        type: "setup.failed", at: ledger.clock.now(),
                        data: [
                            "command": .string(failure.command), "exitCode": .number(Double(failure.exitCode)), "outputTail": .string(failure.outputTail),
                        ])
                }
            }
            await slots.acquire(id)
            // The launch's id and secret are recorded before the spawn: the runtime may connect
            // before its process is recorded.
            let instanceId = UUID().uuidString.lowercased()
            let secret = BearerToken.generate(prefix: "rts_")
            let hostNode = ledger.cluster.recordedNodeId
            let claimed = try await engine.perform(id) { state, _ in
                SessionReducer.launching(state, requestedAt: requestedAt, instanceId: instanceId, secretHash: BearerToken.hash(secret), hostNode: hostNode)
            }
            guard claimed.output, let current = claimed.change?.session else {
                await slots.launchEnded(id, kept: false)
                if try await ledger.store.session(id) == nil {
                    host.removeWorkspace(id)
                    logger.info("cold start abandoned: the session was deleted during its restore", metadata: ["sessionId": "\(id)"])
                }
                return
            }
            let process: RuntimeProcess
            do {
                process = try await host.launch(
                    RuntimeLaunchRequest(
                        session: id, instanceId: instanceId, secret: secret, environment: request.environment,
                        secretNames: Array(current.spec.secrets.keys), stopGraceMs: timing.stopGraceMs,
                        idleTimeoutMs: current.idleTimeoutMs(default: timing.idleTimeoutMs), orphanLimitMs: timing.orphanLimitMs,
                        connectTimeoutMs: timing.pendingTimeoutMs, controlURLs: ledger.cluster.controlURLs(now: ledger.clock.now())
                    ))
            } catch {
                await slots.launchEnded(id, kept: false)
                await launchFailed(id, requestedAt: requestedAt, instanceId: instanceId, error: "\(error)", setupFailures: failures, engine: engine)
                return
            }
            let launch = SessionReducer.Launch(instanceId: instanceId, process: process, sandbox: host.sandboxKind)
            let recorded = failures
            let kept: Bool
            do {
                // The slot is kept or given back before the effects run (a discarded launch's).
                kept = try await engine.perform(id, first: { [slots] committed in await slots.launchEnded(id, kept: committed.output) }) { state, context in
                    try SessionReducer.launched(state, launch, setupFailures: recorded, context: context)
                }.output
            } catch {
                await slots.launchEnded(id, kept: false)
                await discard(id, process: process, sandbox: host.sandboxKind)
                throw error
            }
            // A runtime that died before its process was recorded went unnoticed by the exit
            // handler (it matched no recorded process): it is noticed here.
            if kept, !host.isAlive(process) {
                await exited(id, process: process, detail: "runtime process \(process.pid) exited right after its launch", engine: engine)
            }
        } catch {
            logger.error("cold start failed", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
            await slots.launchEnded(id, kept: false)
            await launchFailed(id, requestedAt: requestedAt, instanceId: nil, error: "\(error)", setupFailures: failures, engine: engine)
        }
    }

    private func launchFailed(
        _ id: SessionID, requestedAt: Date, instanceId: String?, error: String, setupFailures: [NewEvent], engine: Engine
    ) async {
        logger.error("runtime launch failed", metadata: ["sessionId": "\(id)", "error": "\(error)"])
        do {
            try await engine.perform(id) { state, context in
                try SessionReducer.launchFailed(
                    state, requestedAt: requestedAt, instanceId: instanceId, error: error, setupFailures: setupFailures, context: context
                )
            }
        } catch {
            logger.error("recording a failed launch failed", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
        }
    }

    /// Kills a process whose launch nothing wants any more.
    package func discard(_ id: SessionID, process: RuntimeProcess, sandbox: String?) async {
        logger.info("runtime launch discarded: its session no longer wants it", metadata: ["sessionId": "\(id)", "pid": "\(process.pid)"])
        _ = await host.terminate(session: id, process: process, sandbox: sandbox, graceMs: 0)
    }

    // MARK: Stopping

    /// A stop was decided: the runtime's slot will be free.
    package func markStopping(_ id: SessionID) async { await slots.markStopping(id) }

    /// Phase two of a stop: the runtime is asked to shut down, its processes are taken down
    /// (this may take the stop grace: no lock is held), then the stop is recorded once
    /// (`SessionReducer.stopped`). Only the runtime's host node signals its processes: a
    /// runtime hosted by another live node is stopped by that node (it hears of the change); one
    /// whose host node is lost is asked to stop through its connection.
    package func finishStopping(
        _ id: SessionID, process: RuntimeProcess?, sandbox: String?, rule: StopRule, host hostNode: String?, engine: Engine
    ) async {
        guard stops.withLock({ $0.insert(id).inserted }) else { return }
        defer { _ = stops.withLock { $0.remove(id) } }
        switch ledger.cluster.placement(ofHost: hostNode, now: ledger.clock.now()) {
        case .here:
            connections.askToShutDown(id, reason: rule.rawValue)
            if let process {
                let gone = await host.terminate(session: id, process: process, sandbox: sandbox, graceMs: timing.stopGraceMs)
                if !gone { logger.error("runtime processes survived SIGKILL", metadata: ["sessionId": "\(id)"]) }
            }
        case .elsewhere(let node):
            logger.debug("stop left to the runtime's host node", metadata: ["sessionId": "\(id)", "hostNode": "\(node)"])
            return
        case .lost(let node):
            logger.info(
                "stopping a runtime whose host node is lost, through its connection",
                metadata: [
                    "sessionId": "\(id)", "hostNode": "\(node)", "rule": "\(rule.rawValue)",
                ])
            connections.askToShutDown(id, reason: rule.rawValue)
            await connections.waitUntilDisconnected(id, within: .milliseconds(timing.stopGraceMs))
        }
        connections.close(id)
        do {
            try await engine.perform(id) { state, context in try SessionReducer.stopped(state, context: context) }
        } catch is CancellationError {
            // The control plane is shutting down: the runtime stays `stopping`, and the next
            // start's recovery finishes the stop. Nothing is lost.
            logger.notice("stop left to the next start: the control plane is shutting down", metadata: ["sessionId": "\(id)"])
        } catch {
            logger.error("recording a stop failed", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
        }
    }

    /// Does what another node's change asks of a runtime hosted here (or of a lost node's, when
    /// taking its sessions over): finish a stop, launch a start, settle an auto-commit.
    package func reconcile(_ id: SessionID, takingOverFrom lost: String?, engine: Engine) async {
        guard let session = try? await ledger.store.session(id) else { return }
        let runtime = session.runtime
        switch (runtime.state, runtime.process) {
        case (.stopping, let process):
            if lost == nil { await slots.markStopping(id) }
            host.enqueue { [self] in
                await finishStopping(
                    id, process: process, sandbox: runtime.sandbox, rule: runtime.stopReason?.rule ?? .operator, host: runtime.hostNode, engine: engine
                )
            }
        case (.starting, nil):
            guard let requestedAt = runtime.requestedAt else { break }
            // Another node accepted the start: it is admitted here, by this host's capacity (an
            // idle runtime evicted if need be); with every runtime busy the start fails, naming why.
            do {
                try await admit(id, engine: engine)
            } catch {
                await launchFailed(id, requestedAt: requestedAt, instanceId: nil, error: "\(error)", setupFailures: [], engine: engine)
                break
            }
            launchInBackground(id, requestedAt: requestedAt, restore: true, engine: engine)
        default:
            break
        }
        if let pending = session.autoCommitPending { await engine.redo([.autoCommit(pending)], for: id) }
    }

    /// The runtime is recorded stopped: its connection and watch go, its slot is free.
    package func released(_ id: SessionID) async {
        connections.close(id)
        await host.unwatch(session: id)
        await slots.release(id)
    }

    /// The session is gone: its connection, streams, files and slot.
    package func removed(_ id: SessionID, rule: StopRule) async {
        connections.close(id)
        await host.unwatch(session: id)
        host.removeWorkspace(id)
        ledger.hub.close(id)
        await slots.release(id)
        logger.info("session removed", metadata: ["sessionId": "\(id)", "rule": "\(rule.rawValue)"])
    }

    /// Another node deleted a session whose runtime runs here: its processes are taken down
    /// (only this node may signal them), then its files and slot go.
    package func removedByAnotherNode(_ id: SessionID) async {
        if let process = await host.watchedProcess(session: id) {
            _ = await host.terminate(session: id, process: process, sandbox: host.sandboxKind, graceMs: timing.stopGraceMs)
        }
        await removed(id, rule: .deleted)
    }

    /// A runtime process died on its own (`SessionReducer.exited`).
    package func exited(_ id: SessionID, process: RuntimeProcess, detail: String, engine: Engine) async {
        do {
            try await engine.perform(id) { state, context in
                try SessionReducer.exited(state, process: process, detail: detail, context: context)
            }
        } catch {
            logger.error("recording a crash failed", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
        }
    }

    // MARK: Start-up

    /// After a control-plane start: the runtimes that outlived the last one hold their slots
    /// and are watched, the dead ones are declared crashed, interrupted stops, launches,
    /// auto-commits and changes are finished. Runtimes reconnect on their own.
    package func recover(engine: Engine) async {
        guard let all = try? await ledger.store.sessions(withRuntimeIn: [.starting, .running, .stopping]) else { return }
        // With several nodes, each recovers the runtimes of its own host.
        let sessions = ledger.cluster.isShared ? all.filter { $0.runtime.hostNode == ledger.cluster.nodeId } : all
        for session in sessions {
            let id = session.id
            let runtime = session.runtime
            switch (runtime.state, runtime.process) {
            case (.stopping, let process):
                await slots.hold(id, stopping: true)
                host.enqueue { [self] in
                    await finishStopping(
                        id, process: process, sandbox: runtime.sandbox, rule: runtime.stopReason?.rule ?? .operator, host: runtime.hostNode, engine: engine
                    )
                }
            case (.starting, nil):
                if let requestedAt = runtime.requestedAt { launchInBackground(id, requestedAt: requestedAt, restore: true, engine: engine) }
            case (_, let process?):
                await slots.hold(id, stopping: false)
                if host.isAlive(process) {
                    await host.adopt(session: id, process: process)
                } else {
                    host.enqueue { [self] in
                        await exited(id, process: process, detail: "runtime process \(process.pid) is gone (found at control-plane start)", engine: engine)
                    }
                }
            default:
                break
            }
            if let pending = session.autoCommitPending { await engine.redo([.autoCommit(pending)], for: id) }
        }
        logger.info("runtimes recovered", metadata: ["count": "\(sessions.count)"])
    }
}
