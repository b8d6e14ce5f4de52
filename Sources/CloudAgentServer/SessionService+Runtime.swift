import CloudAgentCore
import CloudAgentProtocol
import CloudAgentSandbox
import Foundation
import HTTPTypes
import Logging
import Prometheus

/// Runtime slots: running + starting runtimes at once are limited. Reservations cover the time
/// between admitting a start and recording it.
actor Capacity {
    private var reserved: Set<SessionID> = []
    private let gate = KeyedLocks<Int>()

    func withGate<T: Sendable>(_ body: @Sendable () async throws -> T) async rethrows -> T {
        try await gate.withLock(0, body)
    }

    func reserve(_ id: SessionID) { reserved.insert(id) }
    func release(_ id: SessionID) { reserved.remove(id) }
    var reservations: Set<SessionID> { reserved }
}

extension SessionService {
    // MARK: Capacity

    /// Admits one more runtime start for `id`: when every slot is taken, the running runtime
    /// with no active execution and the oldest last activity is stopped (rule `evicted`); when
    /// every runtime is busy, 503 `RUNTIME_UNAVAILABLE`. Never called while holding a session lock.
    func admitRuntime(for id: SessionID) async throws {
        try await capacity.withGate {
            let reserved = await self.capacity.reservations
            let live = try await self.store.sessions(withRuntimeIn: [.starting, .running]).filter { $0.id != id && !reserved.contains($0.id) }
            if live.count + reserved.subtracting([id]).count < self.maxRuntimes {
                await self.capacity.reserve(id)
                return
            }
            var candidates: [(session: SessionRecord, lastActivity: Date)] = []
            for session in live where session.runtime.state == .running && session.activeExecutionId == nil {
                let latest = try await self.currentExecution(of: session)
                let activity = IdlePolicy.lastActivity(runtimeStartedAt: session.runtime.startedAt, latest: latest)
                candidates.append((session, activity?.at ?? session.createdAt))
            }
            guard let victim = candidates.min(by: { $0.lastActivity < $1.lastActivity }) else {
                self.logger.warning("no runtime slot free", metadata: ["sessionId": "\(id)", "maxRuntimes": "\(self.maxRuntimes)"])
                throw APIError(
                    .serviceUnavailable, code: "RUNTIME_UNAVAILABLE",
                    "all \(self.maxRuntimes) runtimes are busy; retry later", details: ["retryable": .bool(true)]
                )
            }
            let now = self.clock.now()
            let reason = StopReason(
                rule: .evicted, at: now, lastActivityAt: victim.lastActivity, idleMs: now.milliseconds(since: victim.lastActivity),
                idleTimeoutMs: victim.session.idleTimeoutMs(default: self.timing.idleTimeoutMs),
                detail: "capacity: a runtime slot was needed for \(id)"
            )
            if try await self.locks.withLock(victim.session.id, { try await self.beginStopping(victim.session.id, reason: reason) }) {
                self.supervisor.enqueue { [self] in await self.finishStopping(victim.session.id) }
            }
            await self.capacity.reserve(id)
        }
    }

    // MARK: Launching

    func workspaceRequest(id: SessionID, spec: SessionSpec, workBranch: String) throws -> WorkspaceRequest {
        let secrets = try spec.secrets.mapValues { try secretBox.open($0) }
        return WorkspaceRequest(
            sessionId: id,
            repo: try spec.repo.map { RepoSource(url: $0.url, branch: $0.branch, token: try $0.token.map { try secretBox.open($0) }) },
            workBranch: workBranch,
            environment: spec.envVars.merging(secrets) { _, secret in secret },
            secretValues: Array(secrets.values) + (try spec.repo?.token.map { [try secretBox.open($0)] } ?? []),
            setupCommands: spec.setupCommands
        )
    }

    /// Launches the runtime of a session whose runtime is `starting` and not launched yet (the
    /// caller holds the session's lock; spawning is quick). `setupFailures` are those of a cold
    /// start's restore, done before without the lock: they become events, not aborts. Returns
    /// the updated session.
    @discardableResult
    func launchRuntime(_ id: SessionID, setupFailures: [SetupFailure] = []) async throws -> SessionRecord? {
        guard var session = try await store.session(id), session.runtime.state == .starting, session.runtime.process == nil else { return nil }
        let events = setupFailures.map { failure in
            NewEvent(type: "setup.failed", at: clock.now(), data: [
                "command": .string(failure.command), "exitCode": .number(Double(failure.exitCode)), "outputTail": .string(failure.outputTail),
            ])
        }
        do {
            let request = try workspaceRequest(id: id, spec: session.spec, workBranch: session.workBranch ?? "session/\(id.rawValue)")
            let instanceId = UUID().uuidString.lowercased()
            let secret = BearerToken.generate(prefix: "rts_")
            let process = try await supervisor.launch(
                session: id, instanceId: instanceId, secret: secret, environment: request.environment,
                secretNames: Array(session.spec.secrets.keys), stopGraceMs: timing.stopGraceMs,
                idleTimeoutMs: session.idleTimeoutMs(default: timing.idleTimeoutMs), orphanLimitMs: timing.orphanLimitMs
            )
            session.runtime.instanceId = instanceId
            session.runtime.secretHash = BearerToken.hash(secret)
            session.runtime.process = process
            session.runtime.launchedAt = clock.now()
            session.runtime.sandbox = sandboxKind
            try await commit(SessionChange(sessionId: id, session: session, events: events))
            return session
        } catch {
            logger.error("runtime launch failed", metadata: ["sessionId": "\(id)", "error": "\(error)"])
            let reason = StopReason(rule: .crashed, at: clock.now(), detail: "runtime could not start: \(error)")
            try await recordStopped(&session, reason: reason, executionError: "runtime could not start: \(error)", extraEvents: events)
            return session
        }
    }

    /// A cold start as a supervisor job. The slow part — restoring the workspace and running the
    /// setup commands — runs without the session's lock, so the session's interrupt, PATCH and
    /// DELETE, and every other session's timers, go on meanwhile; the pending timeout counts from
    /// the launch that follows. Then, under the lock, the runtime is launched if the session
    /// still wants it; a session deleted meanwhile gets its restored files removed again.
    func launchInBackground(_ id: SessionID) {
        supervisor.enqueue { [self] in
            do {
                if let session = try await store.session(id), session.runtime.state == .starting, session.runtime.process == nil {
                    let request = try workspaceRequest(id: id, spec: session.spec, workBranch: session.workBranch ?? "session/\(id.rawValue)")
                    let failures = await workspaces.restore(request)
                    let deleted: Bool = try await locks.withLock(id) {
                        guard try await self.store.session(id) != nil else { return true }
                        try await self.launchRuntime(id, setupFailures: failures)
                        return false
                    }
                    if deleted {
                        layout.remove(id)
                        logger.info("cold start abandoned: the session was deleted during its restore", metadata: ["sessionId": "\(id)"])
                    }
                }
            } catch {
                logger.error("cold start failed", metadata: ["sessionId": "\(id)", "error": "\(error)"])
            }
            await capacity.release(id)
            await scheduler.poke(id)
        }
    }

    // MARK: Stopping

    /// Phase one of a stop (caller holds the lock): record the reason, state `stopping`.
    /// False when the runtime was not starting or running (a stop is done once).
    func beginStopping(_ id: SessionID, reason: StopReason) async throws -> Bool {
        guard var session = try await store.session(id), session.runtime.state == .starting || session.runtime.state == .running else {
            return false
        }
        try session.runtime.beginStopping(reason)
        session.updatedAt = clock.now()
        try await commit(SessionChange(sessionId: id, session: session))
        logger.info("runtime stop decided", metadata: [
            "sessionId": "\(id)", "rule": "\(reason.rule.rawValue)", "idleMs": "\(reason.idleMs.map(String.init) ?? "-")",
            "idleTimeoutMs": "\(reason.idleTimeoutMs.map(String.init) ?? "-")", "detail": "\(reason.detail ?? "")",
        ])
        return true
    }

    /// Phase two: take the processes down (outside the lock: it may take the stop grace), then
    /// record `stopped` and emit `runtime.stopped`.
    func finishStopping(_ id: SessionID) async {
        guard let session = try? await store.session(id), session.runtime.state == .stopping, let reason = session.runtime.stopReason else { return }
        let gone = await supervisor.terminate(
            session: id, process: session.runtime.process, sandbox: session.runtime.sandbox, reason: reason.rule.rawValue,
            graceMs: timing.stopGraceMs
        )
        if !gone { logger.error("runtime processes survived SIGKILL", metadata: ["sessionId": "\(id)"]) }
        do {
            try await locks.withLock(id) {
                guard var session = try await self.store.session(id), session.runtime.state == .stopping else { return }
                let reason = session.runtime.stopReason ?? reason
                try await self.recordStopped(&session, reason: reason, executionError: "runtime stopped (\(reason.rule.rawValue))")
            }
        } catch is CancellationError {
            // The control plane is shutting down: the runtime stays `stopping`, and the next
            // start's recovery finishes the stop. Nothing is lost.
            logger.notice("stop left to the next start: the control plane is shutting down", metadata: ["sessionId": "\(id)"])
        } catch {
            logger.error("recording a stop failed", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
        }
        await scheduler.poke(id)
    }

    /// Stops a session's runtime now and waits for it (both phases).
    func stopRuntime(_ id: SessionID, reason: StopReason) async {
        let begun = (try? await locks.withLock(id) { try await self.beginStopping(id, reason: reason) }) ?? false
        if begun { await finishStopping(id) }
    }

    /// Records the runtime stopped with `reason` (caller holds the lock): an execution still
    /// active ends (interrupted for a deliberate stop, failed for a crash) and `runtime.stopped` is emitted.
    func recordStopped(_ session: inout SessionRecord, reason: StopReason, executionError: String, extraEvents: [NewEvent] = []) async throws {
        let now = clock.now()
        var events = extraEvents
        var executions: [Execution] = []
        if let activeId = session.activeExecutionId, var execution = try await store.execution(activeId), execution.status.isActive {
            if reason.rule == .crashed {
                try execution.end(.failed, at: now, error: executionError, reportedByRuntime: false)
                events.append(NewEvent(executionId: activeId, type: EventType.executionFailed, at: now, data: ["error": .string(executionError)]))
            } else {
                let why = "runtime shutdown: \(reason.rule.rawValue)"
                try execution.end(.interrupted, at: now, interruptReason: why, reportedByRuntime: false)
                events.append(NewEvent(executionId: activeId, type: EventType.executionInterrupted, at: now, data: ["reason": .string(why)]))
            }
            metrics.executionEnded(execution.status)
            executions.append(execution)
            session.activeExecutionId = nil
        }
        if session.runtime.state != .stopping { try session.runtime.beginStopping(reason) }
        try session.runtime.markStopped(at: now, reason: reason)
        session.runtime.process = nil
        session.runtime.secretHash = nil
        session.updatedAt = now
        events.append(NewEvent(type: EventType.runtimeStopped, at: now, data: Self.stopEventData(reason)))
        let callbacks = try executions.flatMap { try self.callbacks(for: $0, session: session) }
        try await commitSignallingCallbacks(SessionChange(
            sessionId: session.id, session: session, executions: executions, events: events, callbacks: callbacks
        ))
        await supervisor.unwatch(session: session.id)
        metrics.runtimeStopped(reason.rule)
        logger.info("runtime stopped", metadata: [
            "sessionId": "\(session.id)", "rule": "\(reason.rule.rawValue)", "idleMs": "\(reason.idleMs.map(String.init) ?? "-")",
            "idleTimeoutMs": "\(reason.idleTimeoutMs.map(String.init) ?? "-")", "detail": "\(reason.detail ?? "")",
        ])
    }

    /// A runtime process died on its own: rule `crashed`, its execution failed naming why. One
    /// found gone past its idle deadline with no execution active stopped itself for idleness
    /// while it could reach no control plane (the runtime's `OrphanPolicy`): rule `idle`.
    func runtimeExited(_ id: SessionID, process: RuntimeProcess, detail: String) async {
        do {
            try await locks.withLock(id) {
                guard var session = try await self.store.session(id), session.runtime.process?.pid == process.pid,
                      session.runtime.state == .starting || session.runtime.state == .running
                else { return }
                let now = self.clock.now()
                let idle = IdlePolicy.evaluate(
                    runtime: session.runtime, latest: try await self.currentExecution(of: session),
                    idleTimeoutMs: session.idleTimeoutMs(default: self.timing.idleTimeoutMs), now: now
                )
                let reason: StopReason
                if case .stop(var idleReason) = idle {
                    idleReason.detail = (idleReason.detail.map { $0 + "; " } ?? "") + "the runtime stopped itself without a control plane"
                    reason = idleReason
                } else {
                    reason = StopReason(rule: .crashed, at: now, detail: detail)
                }
                try await self.recordStopped(&session, reason: reason, executionError: "runtime died: \(detail)")
            }
        } catch {
            logger.error("recording a crash failed", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
        }
        await scheduler.poke(id)
    }

    // MARK: Start-up

    /// After a control-plane start: watch the runtimes that outlived the last one, declare the
    /// dead ones crashed, finish interrupted stops and launches. Runtimes reconnect on their own.
    public func recoverRuntimes() async {
        guard let sessions = try? await store.sessions(withRuntimeIn: [.starting, .running, .stopping]) else { return }
        for session in sessions {
            let id = session.id
            switch (session.runtime.state, session.runtime.process) {
            case (.stopping, _):
                supervisor.enqueue { [self] in await self.finishStopping(id) }
            case (.starting, nil):
                launchInBackground(id)
            case (_, let process?):
                if supervisor.isAlive(process) {
                    await supervisor.adopt(session: id, process: process)
                } else {
                    supervisor.enqueue { [self] in await self.runtimeExited(id, process: process, detail: "runtime process \(process.pid) is gone (found at control-plane start)") }
                }
            default:
                break
            }
        }
        logger.info("runtimes recovered", metadata: ["count": "\(sessions.count)"])
    }

    // MARK: The runtime connection

    /// Checks a connecting runtime's secret against its session's current launch. A store that
    /// fails throws (a 5xx, which the runtime retries): only an unknown session or a wrong secret
    /// is nil (a 401, which makes the runtime exit).
    func authenticateRuntime(session rawId: String?, secret: String?) async throws -> SessionRecord? {
        guard let rawId, let id = SessionID(rawValue: rawId), let secret, !secret.isEmpty,
              let session = try await store.session(id), let expected = session.runtime.secretHash,
              BearerToken.hash(secret) == expected
        else { return nil }
        return session
    }

    /// A runtime said hello: mark it running (emitting `runtime.started`), welcome it, and
    /// reconcile what it should be doing. Returns false when the runtime must go away.
    func runtimeHello(_ connection: RuntimeConnection, activeExecutionId: String?) async throws -> Bool {
        let id = connection.sessionId
        let outcome: (session: SessionRecord, latest: Execution?)? = try await locks.withLock(id) {
            guard var session = try await self.store.session(id), session.runtime.instanceId == connection.instanceId else { return nil }
            let now = self.clock.now()
            var events: [NewEvent] = []
            switch session.runtime.state {
            case .starting:
                try session.runtime.markRunning(at: now)
                events.append(NewEvent(type: EventType.runtimeStarted, at: now, data: ["cold": .bool(session.runtime.cold ?? false)]))
                self.logger.info("runtime connected", metadata: ["sessionId": "\(id)", "cold": "\(session.runtime.cold ?? false)"])
            case .running:
                session.runtime.connectedAt = now
                self.logger.info("runtime reconnected", metadata: ["sessionId": "\(id)"])
            case .stopping, .stopped:
                return nil
            }
            try await self.commit(SessionChange(sessionId: id, session: session, events: events))
            // Registered and welcomed under the lock: a PATCH of the idle timeout (which sends
            // its settings frame under the same lock) is either in this welcome or finds the
            // connection, so the runtime never keeps a stale idle timeout.
            await self.supervisor.register(connection)
            connection.activeExecution = session.activeExecutionId
            connection.send(.welcome(
                ackedSeq: session.runtime.ackedSeq ?? 0, heartbeatIntervalMs: self.timing.heartbeatIntervalMs, stopGraceMs: self.timing.stopGraceMs,
                idleTimeoutMs: session.idleTimeoutMs(default: self.timing.idleTimeoutMs)
            ))
            return (session, try await self.currentExecution(of: session))
        }
        guard let (session, latest) = outcome else {
            connection.send(.shutdown(reason: "this runtime was stopped"))
            return false
        }
        if let latest, latest.status == .pending { connection.send(.execute(executeCommand(latest, session: session))) }
        if let reported = activeExecutionId, reported != session.activeExecutionId?.rawValue {
            connection.send(.kill(executionId: reported, reason: "execution already ended"))
        }
        await scheduler.poke(id)
        return true
    }

    /// Records the events a runtime reported, in order, each exactly once: a `seq` at or below
    /// the recorded one is a resend and only acknowledged again; one above the next expected is
    /// dropped (the runtime resends it). Events of an execution that is no longer active (failed
    /// for lack of heartbeats, say) are acknowledged and dropped. The events a connection has
    /// already received are taken as one batch: one transaction (the events, the executions they
    /// touch, the session with its `ackedSeq`), then one cumulative ack once it is durable. A
    /// batch ends after an `execution.ended`, so that the completion's follow-ups (auto-commit,
    /// callback, a re-sent execute) see it committed.
    func ingest(_ batch: [RuntimeEvent], from connection: RuntimeConnection) async throws {
        let id = connection.sessionId
        var rest = batch[...]
        while !rest.isEmpty {
            let end = rest.firstIndex { $0.kind == RuntimeEvent.Kind.ended }.map { $0 + 1 } ?? rest.endIndex
            let run = rest[..<end]
            rest = rest[end...]
            // A state transition (running, ended) re-evaluates the session's deadlines at once.
            let transitioned: Bool = try await locks.withLock(id) {
                guard var session = try await self.store.session(id), session.runtime.instanceId == connection.instanceId else { return false }
                let acked = session.runtime.ackedSeq ?? 0
                var last = acked
                var resent = false
                let now = self.clock.now()
                // The executions the batch touches, read once, in the order first touched.
                var touched: [ExecutionID: Execution?] = [:]
                var order: [ExecutionID] = []
                var events: [NewEvent] = []
                var ended: ExecutionID?
                var transitioned = false
                var resend: Execution?
                for event in run {
                    guard event.seq > last else {
                        resent = true
                        continue
                    }
                    guard event.seq == last + 1 else {
                        self.logger.warning("runtime event out of order; waiting for the resend", metadata: ["sessionId": "\(id)", "seq": "\(event.seq)", "acked": "\(last)"])
                        continue
                    }
                    last = event.seq
                    if let executionId = ExecutionID(rawValue: event.executionId) {
                        if touched[executionId] == nil { touched[executionId] = .some(try await self.store.execution(executionId)) }
                        if var execution = touched[executionId] ?? nil, execution.sessionId == id, execution.status.isActive {
                            let data = event.data.mapValues(JSONValue.init)
                            switch event.kind {
                            case RuntimeEvent.Kind.running:
                                if execution.status == .pending {
                                    try execution.markRunning(at: now)
                                    events.append(NewEvent(executionId: executionId, type: EventType.executionRunning, at: now))
                                    transitioned = true
                                }
                            case RuntimeEvent.Kind.agent, RuntimeEvent.Kind.output:
                                if execution.status == .pending {
                                    try execution.markRunning(at: now)
                                    transitioned = true
                                }
                                execution.recordProgress(at: now)
                                // An event arriving now proves the runtime alive now, as a heartbeat would. After
                                // a control-plane restart a runtime whose execution ended meanwhile resends its
                                // backlog and no longer heartbeats; catching up must not count as silence.
                                try execution.recordHeartbeat(at: now)
                                events.append(NewEvent(executionId: executionId, type: event.kind == RuntimeEvent.Kind.agent ? EventType.agent : EventType.output, at: event.at, data: data))
                            case RuntimeEvent.Kind.ended:
                                let outcome = Self.outcome(of: event)
                                try execution.end(
                                    outcome.status, at: now, exitCode: outcome.exitCode, error: outcome.error,
                                    interruptReason: outcome.interruptReason, reportedByRuntime: true
                                )
                                events.append(outcome.event(executionId, now))
                                session.activeExecutionId = nil
                                session.updatedAt = now
                                if let conversation = event.data[RuntimeEvent.conversationIdKey]?.stringValue, !conversation.isEmpty {
                                    session.agentConversationId = conversation
                                }
                                ended = executionId
                                transitioned = true
                            default:
                                self.logger.warning("unknown runtime event kind", metadata: ["sessionId": "\(id)", "kind": "\(event.kind)"])
                            }
                            if !order.contains(executionId) { order.append(executionId) }
                            touched[executionId] = .some(execution)
                        }
                    }
                    // The runtime ended an execution that had already ended here (failed for lack of
                    // heartbeats while the runtime was frozen, say); an execute sent meanwhile was ignored
                    // as busy, so the pending execution is sent again now that the runtime is free.
                    if event.kind == RuntimeEvent.Kind.ended, let activeId = session.activeExecutionId, activeId.rawValue != event.executionId,
                       let pending = try await self.store.execution(activeId), pending.status == .pending
                    {
                        resend = pending
                    }
                }
                guard last > acked else {
                    if resent { connection.send(.ack(seq: acked)) }
                    return false
                }
                session.runtime.ackedSeq = last
                let executions = order.compactMap { touched[$0] ?? nil }
                // The callback of an execution ended here goes into the same transaction — unless
                // the session auto-commits: then it follows the commit and push, so that its
                // receiver finds the work on the branch.
                let callbacks = session.spec.autoCommit
                    ? [] : try executions.filter { $0.id == ended }.flatMap { try self.callbacks(for: $0, session: session) }
                try await self.commitSignallingCallbacks(SessionChange(
                    sessionId: id, session: session, executions: executions, events: events, callbacks: callbacks
                ))
                connection.send(.ack(seq: last))
                if let resend { connection.send(.execute(self.executeCommand(resend, session: session))) }
                if let ended {
                    connection.activeExecution = nil
                    if let execution = touched[ended] ?? nil {
                        if session.spec.autoCommit {
                            await self.autoCommitIfAsked(after: execution, session: session)
                            await self.enqueueCallback(for: execution, session: session)
                        }
                        self.metrics.executionEnded(execution.status)
                        self.logger.info("execution ended", metadata: [
                            "sessionId": "\(id)", "executionId": "\(execution.id)", "status": "\(execution.status.rawValue)",
                            "exitCode": "\(execution.exitCode.map(String.init) ?? "-")",
                        ])
                    }
                }
                return transitioned
            }
            if transitioned { await scheduler.poke(id) }
        }
    }

    struct Outcome {
        var status: ExecutionStatus
        var exitCode: Int?
        var error: String?
        var interruptReason: String?

        func event(_ id: ExecutionID, _ at: Date) -> NewEvent {
            switch status {
            case .completed:
                NewEvent(executionId: id, type: EventType.executionCompleted, at: at, data: ["exitCode": JSONValue(exitCode.map(Int64.init) ?? 0)])
            case .interrupted:
                NewEvent(executionId: id, type: EventType.executionInterrupted, at: at, data: ["reason": JSONValue(interruptReason)])
            default:
                NewEvent(executionId: id, type: EventType.executionFailed, at: at, data: ["error": JSONValue(error), "exitCode": JSONValue(exitCode.map(Int64.init))])
            }
        }
    }

    static func outcome(of event: RuntimeEvent) -> Outcome {
        let exitCode = event.data["exitCode"]?.intValue.map(Int.init)
        switch event.data["status"]?.stringValue {
        case "completed": return Outcome(status: .completed, exitCode: exitCode ?? 0)
        case "interrupted": return Outcome(status: .interrupted, exitCode: exitCode, interruptReason: event.data["interruptReason"]?.stringValue ?? "interrupted")
        default: return Outcome(status: .failed, exitCode: exitCode, error: event.data["error"]?.stringValue ?? "the agent failed")
        }
    }

    /// `count` heartbeats (received together) of the connection's active execution (anything
    /// else is ignored).
    func heartbeat(_ executionId: String, count: Int = 1, from connection: RuntimeConnection) async {
        guard let active = connection.activeExecution, active.rawValue == executionId else { return }
        await heartbeats.record(active, at: clock.now(), count: count)
    }
}

extension JSONValue {
    init(_ value: ProtocolValue) {
        switch value {
        case .null: self = .null
        case .bool(let flag): self = .bool(flag)
        case .number(let number): self = .number(number)
        case .string(let text): self = .string(text)
        case .array(let items): self = .array(items.map(JSONValue.init))
        case .object(let object): self = .object(object.mapValues(JSONValue.init))
        }
    }
}
