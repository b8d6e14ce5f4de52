import Foundation

/// What every decision is made against: the time, the durations, and since when the control
/// plane could hear runtimes (downtime before it never counts against a runtime).
public struct SessionContext: Sendable, Equatable {
    public var now: Date
    public var timing: Timing
    /// Since when some node has been serving without a break (one node: when it started).
    public var controlPlaneStartedAt: Date
    /// The node deciding (several nodes on one database), recorded as a launch's host and a
    /// hello's connected node; nil for a single node.
    public var nodeId: String?
    /// Nodes whose registration lapsed, with when they were last heard of: a runtime that was
    /// connected to one is judged from then, when another node could first have heard it.
    public var lostNodes: [String: Date]
    /// When each registered node last started (several nodes).
    public var nodeStarts: [String: Date]
    /// How much agent output the store keeps.
    public var eventCaps: EventCaps
    /// A user's runtimes starting or running at once (`CLOUD_AGENT_MAX_RUNTIMES_PER_USER`); nil: no limit.
    public var maxRuntimesPerUser: Int?

    public init(
        now: Date, timing: Timing, controlPlaneStartedAt: Date, nodeId: String? = nil, lostNodes: [String: Date] = [:], nodeStarts: [String: Date] = [:],
        eventCaps: EventCaps = .default, maxRuntimesPerUser: Int? = nil
    ) {
        self.eventCaps = eventCaps
        self.maxRuntimesPerUser = maxRuntimesPerUser
        self.now = now
        self.timing = timing
        self.controlPlaneStartedAt = controlPlaneStartedAt
        self.nodeId = nodeId
        self.lostNodes = lostNodes
        self.nodeStarts = nodeStarts
    }

    /// Since when the control plane could have heard this session's runtime: downtime before
    /// it never counts. A runtime whose node died could be heard by another from that death on.
    public func heardSince(_ session: SessionRecord) -> Date {
        guard let node = session.runtime.connectedNode, let lost = lostNodes[node] else { return controlPlaneStartedAt }
        return max(controlPlaneStartedAt, lost)
    }
}

/// A decision worth a log line (and a metric): the shell writes one line per note.
public enum DecisionNote: Sendable, Equatable {
    case executionAccepted(ExecutionID, runtime: RuntimeState)
    case executionQueued(ExecutionID, position: Int)
    case queuedCancelled(ExecutionID)
    /// An agent reported usage: what it added.
    case usageReported(agent: String, Usage)
    case executionEnded(ExecutionID, ExecutionStatus, detail: String?)
    case executionStuck(ExecutionID, sinceLastProgressMs: Int64)
    case stopDecided(StopReason)
    case runtimeStopped(StopReason)
    case runtimeLaunched(RuntimeProcess)
    case runtimeConnected(cold: Bool)
    case runtimeReconnected
    case sessionExpired(untouchedMs: Int64)
    case eventsSwept(before: Date)
    case eventOutOfOrder(seq: Int64, acked: Int64)
    case unknownEventKind(String)
    case inputRequested(String, InputKind)
    /// A request resolved, `waitedMs` after it was asked.
    case inputResolved(String, InputDecision, by: InputResolver, waitedMs: Int64)
    /// The session's usage reached its budget during `execution`: `asked` (approvals `ask`) or
    /// interrupted.
    case budgetReached(ExecutionID, measure: String, used: Double, limit: Double, asked: Bool)
}

/// Every change to a session, as pure functions `(state, input, context) → decision`: the
/// change to commit in one transaction (record, executions, events, wake-up, outbox rows) and
/// the effects to run after it. The store calls them inside `SessionStore.update`; the shell
/// only runs the effects. Nothing here reads a clock, a file or a socket.
///
/// The API's commands are in this file; the runtime's frames in `SessionReducer+Runtime.swift`,
/// the rules in `SessionReducer+Rules.swift`.
public enum SessionReducer {
    /// A decision with notes for the log.
    public struct Outcome<Output: Sendable>: Sendable {
        public var output: Output
        public var notes: [DecisionNote]

        public init(output: Output, notes: [DecisionNote]) {
            self.output = output
            self.notes = notes
        }
    }

    // MARK: API commands

    /// An execution to start: the prepared prompt (initiate, `followUp` false) or a follow-up.
    public struct NewExecution: Sendable, Equatable {
        public var id: ExecutionID
        public var prompt: String?
        public var mode: String?
        public var model: String?
        public var followUp: Bool
        /// A follow-up that waits its turn when another execution is active (else it is refused).
        public var queue: Bool

        public init(id: ExecutionID, prompt: String? = nil, mode: String? = nil, model: String? = nil, followUp: Bool, queue: Bool = false) {
            self.id = id
            self.prompt = prompt
            self.mode = mode
            self.model = model
            self.followUp = followUp
            self.queue = queue
        }
    }

    /// Accepts an execution. A stopped runtime is started (cold) at once; a stopping one is
    /// started again once its stop is recorded (`stopped`): the caller never waits for a stop.
    /// A follow-up sent with `queue` while another execution is active (or others wait) is
    /// queued instead (`queueMessage`).
    public static func startExecution(
        _ state: SessionState?, id: SessionID, owner: Owner, _ request: NewExecution, context: SessionContext
    ) throws(SessionError) -> Decision<Outcome<Execution>> {
        var session = try owned(state, id: id, by: owner)
        if !request.followUp, session.initiatedAt != nil { throw .invalidState("session \(id) was already initiated; send a message instead") }
        if request.followUp, session.initiatedAt == nil { throw .invalidState("session \(id) was not initiated yet; initiate it first") }
        if request.followUp, request.queue, session.activeExecutionId != nil || !session.queue.isEmpty {
            return try queueMessage(session, request, context: context)
        }
        if let active = session.activeExecutionId ?? session.queue.first { throw .executionInProgress(active) }
        if isChanging(session, context) { throw .invalidState("session \(id) is being changed; retry once the change is done") }
        let now = context.now
        let prompt = request.prompt ?? session.spec.prompt
        let execution = Execution(
            id: request.id, sessionId: id, prompt: prompt, mode: request.mode ?? session.spec.mode,
            model: request.model ?? session.spec.model, acceptedAt: now
        )
        let runtimeBefore = session.runtime.state
        // A runtime that is not up is started for it: within the owner's quota, counted in this
        // transaction under the owner's lock (a stopping one starts again once its stop is recorded).
        if runtimeBefore == .stopped || runtimeBefore == .stopping, let limit = context.maxRuntimesPerUser, let count = state?.ownerRuntimes,
            count >= limit
        {
            throw .limitReached(
                .runtimesPerUser, limit: Double(limit),
                "\(owner.user) already has \(count) runtimes starting or running (at most \(limit) per user) and none of them is idle; retry once one is")
        }
        var effects: [SessionEffect] = [.deliverCommands]
        // The execute waits for the last execution's auto-commit: make sure one is under way
        // (after a control-plane crash, nothing else would start it again).
        if let pending = session.autoCommitPending { effects.append(.autoCommit(pending)) }
        // A stopped runtime is started (cold); any other is up, or will start again once its stop
        // is recorded.
        if case .stopped(let stopped) = session.runtime {
            session.runtime = .starting(stopped.starting(at: now))
            effects.append(.launch(requestedAt: now, restore: true))
        }
        if session.initiatedAt == nil { session.initiatedAt = now }
        session.activeExecutionId = execution.id
        session.executionCount += 1
        session.updatedAt = now
        let change = SessionChange(
            sessionId: id, session: session, newExecution: execution,
            events: [
                NewEvent(
                    executionId: execution.id, type: EventType.executionStarted, at: now,
                    data: [
                        "prompt": .string(String(prompt.prefix(2000))), "followUp": .bool(request.followUp),
                    ])
            ],
            commands: [.execute(execution.id)]
        )
        return Decision(change: change, effects: effects, output: Outcome(output: execution, notes: [.executionAccepted(execution.id, runtime: runtimeBefore)]))
    }

    /// What an interrupt did.
    public enum Interrupt: Sendable, Equatable {
        /// Nothing was active.
        case none
        /// The runtime was told to kill the execution; it reports the end.
        case asked(ExecutionID)
        /// It had not started running: it ended here.
        case ended(ExecutionID)
    }

    /// Interrupts the active execution (idempotent). A running one is killed by its runtime
    /// (which reports it interrupted); a pending one ends here at once, and its runtime is told
    /// to kill it in case it had just started it.
    public static func interrupt(
        _ state: SessionState?, id: SessionID, owner: Owner, context: SessionContext
    ) throws -> Decision<Outcome<Interrupt>> {
        var session = try owned(state, id: id, by: owner)
        guard let activeId = session.activeExecutionId, var execution = state?.execution, execution.id == activeId, execution.status.isActive else {
            return Decision(output: Outcome(output: .none, notes: []))
        }
        let kill = OutboxCommand.kill(activeId, reason: "user")
        let now = context.now
        // The pending input requests are cancelled at once; the kill tells the agent.
        let cancelled = cancelInputs(&session, of: activeId, now: now)
        if execution.status == .running {
            if !cancelled.isEmpty { session.updatedAt = now }
            return Decision(
                change: SessionChange(sessionId: session.id, session: cancelled.isEmpty ? nil : session, events: cancelled, commands: [kill]),
                effects: [.deliverCommands], output: Outcome(output: .asked(activeId), notes: [])
            )
        }
        // Active and not running: pending, which may end interrupted.
        try execution.end(.interrupted, at: now, interruptReason: "user", reportedByRuntime: false)
        session.activeExecutionId = nil
        session.updatedAt = now
        let change = SessionChange(
            sessionId: session.id, session: session, executions: [execution],
            events: cancelled + [NewEvent(executionId: activeId, type: EventType.executionInterrupted, at: now, data: ["reason": "user"])],
            callbacks: CallbackDelivery.completion(of: execution, session: session, now: now).map { [$0] } ?? [],
            commands: [kill], dropCommands: [.execution(activeId, kinds: ["execute"])]
        )
        return Decision(
            change: change, effects: [.deliverCommands, .deliverCallbacks],
            output: Outcome(output: .ended(activeId), notes: [.executionEnded(activeId, .interrupted, detail: "user")])
        )
    }

    /// A change of a session's fields that its running runtime can take as it is (the idle
    /// timeout and the budget at any time; the prompt, mode, model, callback and auto-commit
    /// before initiate). A new idle timeout reaches the runtime as a `settings` command. A new
    /// budget starts without raises, and lets an agent waiting at the old one go on when the
    /// session's usage is under the new one.
    public static func edit(
        _ state: SessionState?, id: SessionID, owner: Owner, onlyLiveFields: Bool, context: SessionContext,
        _ apply: @Sendable (inout SessionRecord) throws -> Void
    ) throws -> Decision<SessionRecord> {
        var session = try owned(state, id: id, by: owner)
        if session.initiatedAt != nil, !onlyLiveFields {
            throw SessionError.invalidState("session \(session.id) was initiated: only idleTimeoutMs and budget may change now")
        }
        let before = session.idleTimeoutMs(default: context.timing.idleTimeoutMs)
        let budgetBefore = session.spec.budget
        try apply(&session)
        session.updatedAt = context.now
        let after = session.idleTimeoutMs(default: context.timing.idleTimeoutMs)
        var change = SessionChange(sessionId: session.id, session: session)
        var effects: [SessionEffect] = []
        if after != before, session.runtime.state == .running {
            change.dropCommands = [.settings]
            change.commands = [.settings(idleTimeoutMs: after)]
            effects.append(.deliverCommands)
        }
        if session.spec.budget != budgetBefore {
            session.budgetRaises = nil
            let released = releaseBudgetWaits(&session, now: context.now)
            change.events += released.events
            change.commands += released.commands
            change.dropCommands += released.drops
            if !released.commands.isEmpty, !effects.contains(.deliverCommands) { effects.append(.deliverCommands) }
            change.session = session
        }
        return Decision(change: change, effects: effects, output: session)
    }

    /// Phase one of a change that needs a new runtime (repo, setup commands, environment,
    /// secrets, agent; before initiate only): the session is marked as changing (an initiate
    /// meanwhile is a 409) and its runtime stopped (rule `operator`).
    public static func beginChange(
        _ state: SessionState?, id: SessionID, owner: Owner, context: SessionContext
    ) throws(SessionError) -> Decision<Outcome<Void>> {
        var session = try owned(state, id: id, by: owner)
        if session.initiatedAt != nil { throw .invalidState("session \(session.id) was initiated: only idleTimeoutMs and budget may change now") }
        if isChanging(session, context) { throw .invalidState("session \(session.id) is being changed; retry once the change is done") }
        session.changingSince = context.now
        session.changingNode = context.nodeId
        session.updatedAt = context.now
        var effects: [SessionEffect] = []
        var notes: [DecisionNote] = []
        let reason = StopReason(rule: .operator, at: context.now, detail: "session changed before initiate")
        let stopping: RuntimeStatus.Stopping? =
            switch session.runtime {
            case .starting(let starting): starting.stopping(reason)
            case .running(let running): running.stopping(reason)
            // Stopping already (a stop is decided once), or stopped: nothing to stop.
            case .stopping, .stopped: nil
            }
        if let stopping {
            session.runtime = .stopping(stopping)
            effects.append(.terminate(stopping.process, sandbox: stopping.sandbox, rule: .operator, host: stopping.hostNode))
            notes.append(.stopDecided(reason))
        }
        return Decision(change: SessionChange(sessionId: session.id, session: session), effects: effects, output: Outcome(output: (), notes: notes))
    }

    /// Phase two: the new fields land (or, with `apply` nil after a failed preparation, the old
    /// ones stay) and the runtime starts again; its workspace is restored first when `restore`.
    public static func finishChange(
        _ state: SessionState?, id: SessionID, owner: Owner, restore: Bool, context: SessionContext,
        _ apply: (@Sendable (inout SessionRecord) throws -> Void)?
    ) throws -> Decision<SessionRecord> {
        var session = try owned(state, id: id, by: owner)
        if let apply { try apply(&session) }
        session.changingSince = nil
        session.changingNode = nil
        session.updatedAt = context.now
        // A workspace made anew was made on the deciding node's host: the runtime starts there.
        if !restore { session.runtime.moveHost(to: context.nodeId) }
        var effects: [SessionEffect] = []
        // Stopped, as the first phase leaves it, the runtime starts again. Still stopping (its host,
        // another node, has not recorded the stop yet), it is left to that stop: nothing starts here.
        if case .stopped(let stopped) = session.runtime {
            session.runtime = .starting(stopped.starting(at: context.now))
            effects.append(.launch(requestedAt: context.now, restore: restore))
        }
        return Decision(change: SessionChange(sessionId: session.id, session: session), effects: effects, output: session)
    }

    /// Deletes a session: the record goes in this transaction; its processes are taken down and
    /// its files removed after it. A runtime not stopped yet is recorded stopped (rule
    /// `deleted`): the change's events — `runtime.stopped`, and the active execution's
    /// interruption — are the session's last, sent to live subscribers though not kept.
    public static func delete(_ state: SessionState?, id: SessionID, owner: Owner, context: SessionContext) throws -> Decision<Outcome<Void>> {
        let session = try owned(state, id: id, by: owner)
        var change = SessionChange.delete(session.id)
        var effects: [SessionEffect] = []
        var notes: [DecisionNote] = []
        if let state, session.runtime.state != .stopped {
            let reason = StopReason(rule: .deleted, at: context.now, detail: "session deleted")
            let stop = try recordStopped(state, reason: reason, executionError: "session deleted", context: context)
            change.events = stop.change?.events ?? []
            notes = stop.output.notes
            effects.append(.terminate(session.runtime.process, sandbox: session.runtime.sandbox, rule: .deleted, host: session.runtime.hostNode))
        }
        effects.append(.removed(.deleted))
        return Decision(change: change, effects: effects, output: Outcome(output: (), notes: notes))
    }

    // MARK: The runtime's lifecycle

    /// A spawned runtime as it is recorded.
    public struct Launch: Sendable, Equatable {
        public var instanceId: String
        public var process: RuntimeProcess
        public var sandbox: String

        public init(instanceId: String, process: RuntimeProcess, sandbox: String) {
            self.instanceId = instanceId
            self.process = process
            self.sandbox = sandbox
        }
    }

    /// About to spawn a runtime for the start requested at `requestedAt`: its launch's id and
    /// secret are recorded first, so that a runtime connecting at once (before its process is
    /// recorded) is known. False when the session no longer wants that start (deleted, stopped,
    /// or started anew): nothing is spawned. A launch a crash interrupted is replaced.
    public static func launching(
        _ state: SessionState?, requestedAt: Date, instanceId: String, secretHash: String, hostNode: String? = nil
    ) -> Decision<Outcome<Bool>> {
        guard var session = state?.session, case .starting(var starting) = session.runtime, starting.process == nil,
            starting.requestedAt == requestedAt
        else { return Decision(output: Outcome(output: false, notes: [])) }
        starting.recordLaunching(instanceId: instanceId, secretHash: secretHash, hostNode: hostNode)
        session.runtime = .starting(starting)
        return Decision(change: SessionChange(sessionId: session.id, session: session), output: Outcome(output: true, notes: []))
    }

    /// The runtime of launch `launch.instanceId` was spawned: its process is recorded (it may
    /// have connected already) and the pending timeout counts from now. When the session no
    /// longer has that launch (deleted, stopped, or started anew meanwhile) the process is
    /// discarded, and a deleted session's restored files removed again. `setupFailures` are the
    /// cold start's restore failures, as `setup.failed` events.
    public static func launched(
        _ state: SessionState?, _ launch: Launch, setupFailures: [NewEvent], context: SessionContext
    ) throws(IllegalTransition) -> Decision<Outcome<Bool>> {
        guard let state else {
            return Decision(effects: [.discardLaunch(launch.process, sandbox: launch.sandbox), .removed(.deleted)], output: Outcome(output: false, notes: []))
        }
        var session = state.session
        guard session.runtime.state == .starting || session.runtime.state == .running, session.runtime.process == nil,
            session.runtime.instanceId == launch.instanceId
        else {
            return Decision(effects: [.discardLaunch(launch.process, sandbox: launch.sandbox)], output: Outcome(output: false, notes: []))
        }
        try session.runtime.recordLaunched(launch.process, sandbox: launch.sandbox, at: context.now)
        return Decision(
            change: SessionChange(sessionId: session.id, session: session, events: setupFailures),
            output: Outcome(output: true, notes: [.runtimeLaunched(launch.process)])
        )
    }

    /// The start requested at `requestedAt` could not be carried out (the workspace or the spawn
    /// failed): the runtime is recorded stopped (rule `crashed`) and its execution failed, naming
    /// why — when the session is still in that start (and, given an `instanceId`, in that
    /// launch). Nil state (deleted meanwhile) has its restored files removed again.
    public static func launchFailed(
        _ state: SessionState?, requestedAt: Date, instanceId: String?, error: String, setupFailures: [NewEvent], context: SessionContext
    ) throws(IllegalTransition) -> Decision<Outcome<Void>> {
        guard let state else { return Decision(effects: [.removed(.deleted)], output: Outcome(output: (), notes: [])) }
        let runtime = state.session.runtime
        guard runtime.state == .starting, runtime.process == nil, runtime.requestedAt == requestedAt,
            instanceId == nil || runtime.instanceId == instanceId
        else { return Decision(output: Outcome(output: (), notes: [])) }
        let reason = StopReason(rule: .crashed, at: context.now, detail: "runtime could not start: \(error)")
        return try recordStopped(state, reason: reason, executionError: "runtime could not start: \(error)", extraEvents: setupFailures, context: context)
    }

    /// Phase one of a stop: the reason is recorded and the runtime is `stopping`; the effect takes
    /// its processes down and `stopped` records the end. False when no stop was decided (a stop
    /// is decided once).
    public static func beginStopping(_ state: SessionState?, reason: StopReason) -> Decision<Outcome<Bool>> {
        guard var session = state?.session else { return Decision(output: Outcome(output: false, notes: [])) }
        let stopping: RuntimeStatus.Stopping
        switch session.runtime {
        case .starting(let starting): stopping = starting.stopping(reason)
        case .running(let running): stopping = running.stopping(reason)
        // Stopping already (a stop is decided once), or stopped: nothing to stop.
        case .stopping, .stopped: return Decision(output: Outcome(output: false, notes: []))
        }
        session.runtime = .stopping(stopping)
        session.updatedAt = reason.at
        return Decision(
            change: SessionChange(sessionId: session.id, session: session),
            effects: [.terminate(stopping.process, sandbox: stopping.sandbox, rule: reason.rule, host: stopping.hostNode)],
            output: Outcome(output: true, notes: [.stopDecided(reason)])
        )
    }

    /// Eviction: stops this runtime (rule `evicted`) so that `requester` gets its slot — only
    /// when, in this transaction, it is running with no accepted execution and no pending
    /// auto-commit. A message accepted since the victim was picked saves it. The reason records
    /// its last activity and idle time.
    public static func evict(
        _ state: SessionState?, for requester: SessionID, because why: String = "capacity: a runtime slot was needed", context: SessionContext
    ) -> Decision<Outcome<Bool>> {
        guard let state, state.session.runtime.state == .running, state.session.activeExecutionId == nil,
            state.session.autoCommitPending == nil, state.execution?.status.isActive != true
        else { return Decision(output: Outcome(output: false, notes: [])) }
        let session = state.session
        let last = IdlePolicy.lastActivity(runtimeStartedAt: session.runtime.startedAt, latest: state.execution)?.at ?? session.createdAt
        let reason = StopReason(
            rule: .evicted, at: context.now, lastActivityAt: last, idleMs: context.now.milliseconds(since: last),
            idleTimeoutMs: session.idleTimeoutMs(default: context.timing.idleTimeoutMs),
            detail: "\(why) for \(requester)"
        )
        return beginStopping(state, reason: reason)
    }

    /// Phase two: the processes are gone; the stop is recorded once. An execution accepted
    /// after the stop was decided survives it and starts the runtime again.
    public static func stopped(_ state: SessionState?, context: SessionContext) throws(IllegalTransition) -> Decision<Outcome<Void>> {
        guard let state, state.session.runtime.state == .stopping else { return Decision(output: Outcome(output: (), notes: [])) }
        let reason = state.session.runtime.stopReason ?? StopReason(rule: .operator, at: context.now)
        return try recordStopped(state, reason: reason, executionError: "runtime stopped (\(reason.rule.rawValue))", context: context)
    }

    /// The runtime process `process` died on its own: rule `crashed`, its execution failed naming
    /// why. Found gone past its idle deadline with no execution active, it stopped itself for
    /// idleness while it could reach no control plane (the runtime's `OrphanPolicy`): rule `idle`.
    public static func exited(
        _ state: SessionState?, process: RuntimeProcess, detail: String, context: SessionContext
    ) throws(IllegalTransition) -> Decision<Outcome<Void>> {
        guard let state, state.session.runtime.process?.pid == process.pid,
            state.session.runtime.state == .starting || state.session.runtime.state == .running
        else { return Decision(output: Outcome(output: (), notes: [])) }
        let session = state.session
        let idle = IdlePolicy.evaluate(
            runtime: session.runtime, latest: state.execution,
            idleTimeoutMs: session.idleTimeoutMs(default: context.timing.idleTimeoutMs), now: context.now
        )
        var reason = StopReason(rule: .crashed, at: context.now, detail: detail)
        if case .stop(var idleReason) = idle, session.autoCommitPending == nil {
            idleReason.detail = (idleReason.detail.map { $0 + "; " } ?? "") + "the runtime stopped itself without a control plane"
            reason = idleReason
        }
        return try recordStopped(state, reason: reason, executionError: "runtime died: \(detail)", context: context)
    }

    /// Records the runtime stopped with `reason`: the execution active when the stop was decided
    /// ends (interrupted for a deliberate stop, failed for a crash), `runtime.stopped` is
    /// emitted and the outbox emptied. A pending execution accepted after the stop was decided
    /// keeps its place and starts the runtime again. Every caller has found the runtime not
    /// stopped yet: a stop recorded twice is a bug, thrown.
    static func recordStopped(
        _ state: SessionState, reason: StopReason, executionError: String, extraEvents: [NewEvent] = [], context: SessionContext
    ) throws(IllegalTransition) -> Decision<Outcome<Void>> {
        let now = context.now
        var session = state.session
        var events = extraEvents
        var executions: [Execution] = []
        var callbacks: [CallbackDelivery] = []
        var notes: [DecisionNote] = []
        var survivor: Execution?
        if let activeId = session.activeExecutionId, var execution = state.execution, execution.id == activeId, execution.status.isActive {
            if session.runtime.state == .stopping, execution.status == .pending, execution.startedAt > (session.runtime.stopReason?.at ?? now) {
                survivor = execution
            } else {
                if let truncated = session.truncationEvent(of: activeId, at: now) { events.append(truncated) }
                if reason.rule == .crashed {
                    try execution.end(.failed, at: now, error: executionError, reportedByRuntime: false)
                    events.append(NewEvent(executionId: activeId, type: EventType.executionFailed, at: now, data: ["error": .string(executionError)]))
                    notes.append(.executionEnded(activeId, .failed, detail: executionError))
                } else {
                    let why = "runtime shutdown: \(reason.rule.rawValue)"
                    try execution.end(.interrupted, at: now, interruptReason: why, reportedByRuntime: false)
                    events.append(NewEvent(executionId: activeId, type: EventType.executionInterrupted, at: now, data: ["reason": .string(why)]))
                    notes.append(.executionEnded(activeId, .interrupted, detail: why))
                }
                executions.append(execution)
                session.activeExecutionId = nil
                if let delivery = CallbackDelivery.completion(of: execution, session: session, now: now) { callbacks.append(delivery) }
            }
        }
        // The stop's reason replaces the one a stopping runtime was stopped for; its process and
        // secret go with it.
        try session.runtime.markStopped(at: now, reason: reason)
        session.updatedAt = now
        events.append(NewEvent(type: EventType.runtimeStopped, at: now, data: stopEventData(reason)))
        notes.append(.runtimeStopped(reason))
        var effects: [SessionEffect] = [.released]
        var commands: [OutboxCommand] = []
        if let survivor {
            try session.runtime.requestStart(at: now)
            effects.append(.launch(requestedAt: now, restore: true))
            commands.append(.execute(survivor.id))
        }
        if !callbacks.isEmpty { effects.append(.deliverCallbacks) }
        let change = SessionChange(
            sessionId: session.id, session: session, executions: executions, events: events, callbacks: callbacks,
            commands: commands, dropCommands: [.all]
        )
        return Decision(change: change, effects: effects, output: Outcome(output: (), notes: notes))
    }

    /// The auto-commit after `execution` is done and reported by `event`: it is recorded, the
    /// execution's callback follows it (so that its receiver finds the work on the branch), and
    /// an execution accepted meanwhile may now go to the runtime.
    public static func autoCommitted(_ state: SessionState?, execution: Execution, event: NewEvent, context: SessionContext) -> Decision<Void> {
        guard var session = state?.session else { return Decision() }
        var change = SessionChange(sessionId: session.id, events: [event])
        if session.autoCommitPending == execution.id {
            session.autoCommitPending = nil
            change.session = session
        }
        change.callbacks = CallbackDelivery.completion(of: execution, session: session, now: context.now).map { [$0] } ?? []
        return Decision(change: change, effects: [.deliverCommands, .deliverCallbacks])
    }

    // MARK: Helpers

    /// Whether a change that needs a new runtime is being carried out. A mark older than the
    /// start of the node that made it (this control plane's, for a single node), or made by a
    /// node since lost, is one a crash interrupted: nothing carries it out any more.
    static func isChanging(_ session: SessionRecord, _ context: SessionContext) -> Bool {
        guard let since = session.changingSince else { return false }
        guard let node = session.changingNode else { return since >= context.controlPlaneStartedAt }
        if context.lostNodes[node] != nil { return false }
        return context.nodeStarts[node].map { since >= $0 } ?? true
    }

    /// Session `id` when it exists and belongs to `owner`: another owner's session is not found.
    static func owned(_ state: SessionState?, id: SessionID, by owner: Owner) throws(SessionError) -> SessionRecord {
        guard let session = state?.session, session.owner == owner else { throw .notFound(id) }
        return session
    }

    /// `runtime.stopped`'s data.
    public static func stopEventData(_ reason: StopReason) -> [String: JSONValue] {
        [
            "rule": .string(reason.rule.rawValue), "lastActivityAt": JSONValue(reason.lastActivityAt),
            "idleMs": JSONValue(reason.idleMs), "idleTimeoutMs": JSONValue(reason.idleTimeoutMs), "detail": JSONValue(reason.detail),
        ]
    }
}
