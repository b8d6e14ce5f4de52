import Foundation

/// An event a runtime reported, numbered by its launch (`seq`).
public struct ReportedEvent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case running, agent, output, ended
        /// The agent asks for permission or an answer: data is the request (`InputRequest(reported:)`).
        case inputRequested
        /// The agent withdrew a request it had made: data `{requestId}`.
        case inputWithdrawn
        /// The tokens and cost of the execution so far, as the agent reported them (`Usage(reported:)`).
        case usage
        case unknown(String)
    }

    public var seq: Int64
    public var executionId: String
    public var kind: Kind
    public var at: Date
    public var data: [String: JSONValue]

    public init(seq: Int64, executionId: String, kind: Kind, at: Date, data: [String: JSONValue] = [:]) {
        self.seq = seq
        self.executionId = executionId
        self.kind = kind
        self.at = at
        self.data = data
    }

    /// The key of the agent's own conversation id in an `ended` event's data.
    public static let conversationIdKey = "conversationId"

    /// Whether a conversation id the agent reported may be kept and handed back to it: it goes
    /// into the next execution's command line (`--resume`, `codex exec resume ID`, a command
    /// agent's `{conversationId}`), so it is an agent's word that must not become an option. At
    /// most 256 characters, none of them blank or a control character, and not starting with `-`.
    public static func isSafeConversationId(_ id: String) -> Bool {
        !id.isEmpty && id.count <= 256 && !id.hasPrefix("-")
            && id.unicodeScalars.allSatisfy { !$0.properties.isWhitespace && !($0.value < 0x20 || $0.value == 0x7F) }
    }
}

extension SessionReducer {
    /// What a connecting runtime is told.
    public struct Welcome: Sendable, Equatable {
        public var ackedSeq: Int64
        public var idleTimeoutMs: Int64
        /// The execution it may heartbeat.
        public var activeExecutionId: ExecutionID?
        /// An execution the runtime reported active that has ended here: it must be killed.
        public var killReported: String?
    }

    /// A runtime said hello. A `starting` runtime becomes `running` (`runtime.started`); a
    /// running one reconnected. Nil when this launch is not the session's current one or its
    /// runtime is stopping: the runtime must shut down. The welcome carries the idle timeout in
    /// force, so older `settings` rows are moot; every other outbox row goes to the new connection.
    public static func hello(
        _ state: SessionState?, instanceId: String, reportedActive: String?, context: SessionContext
    ) -> Decision<Outcome<Welcome?>> {
        guard var session = state?.session, session.runtime.instanceId == instanceId else {
            return Decision(output: Outcome(output: nil, notes: []))
        }
        let now = context.now
        var events: [NewEvent] = []
        var notes: [DecisionNote] = []
        switch session.runtime {
        case .starting(let starting):
            var running = starting.running(at: now)
            running.recordConnection(at: now, node: context.nodeId)
            session.runtime = .running(running)
            events.append(NewEvent(type: EventType.runtimeStarted, at: now, data: ["cold": .bool(running.cold)]))
            notes.append(.runtimeConnected(cold: running.cold))
        case .running(var running):
            running.recordConnection(at: now, node: context.nodeId)
            session.runtime = .running(running)
            notes.append(.runtimeReconnected)
        case .stopping, .stopped:
            return Decision(output: Outcome(output: nil, notes: []))
        }
        var commands: [OutboxCommand] = []
        if let pending = state?.execution, pending.id == session.activeExecutionId, pending.status == .pending {
            commands.append(.execute(pending.id))
        }
        let welcome = Welcome(
            ackedSeq: session.runtime.ackedSeq ?? 0, idleTimeoutMs: session.idleTimeoutMs(default: context.timing.idleTimeoutMs),
            activeExecutionId: session.activeExecutionId,
            killReported: reportedActive.flatMap { $0 == session.activeExecutionId?.rawValue ? nil : $0 }
        )
        // A first connect moves the deadlines (the connect deadline goes, the idle one starts).
        // A reconnect moves none the rules must act on before the runtime's first frames: its
        // silence since it lost its node is judged at its stored wake-up, once the events it
        // resends and its heartbeats are recorded.
        return Decision(
            change: SessionChange(sessionId: session.id, session: session, events: events, commands: commands, dropCommands: [.settings]),
            effects: [.deliverCommands] + (session.autoCommitPending.map { [.autoCommit($0)] } ?? []),
            output: Outcome(output: welcome, notes: notes), movesDeadlines: !events.isEmpty
        )
    }

    /// What recording a batch of runtime events did.
    public struct Ingested: Sendable, Equatable {
        /// The seq to acknowledge (cumulative), nil for none.
        public var ack: Int64?
        /// Whether an execution started running, ended or began waiting for input (its deadlines changed).
        public var transitioned: Bool
        /// The execution the batch ended.
        public var ended: Execution?
    }

    /// Records the events a runtime reported, in order, each exactly once: a `seq` at or below
    /// the recorded one is a resend and only acknowledged again; one above the next expected is
    /// dropped (the runtime resends it). Events of an execution that is not the session's
    /// active one (failed here for lack of heartbeats, say) are acknowledged and dropped.
    ///
    /// An execution's end takes its outbox rows with it and writes its callback, unless the
    /// session auto-commits: then its auto-commit is pending (an effect), and the callback
    /// follows the commit and push. The runtime ending an execution that had already ended here
    /// has the pending one sent again.
    ///
    /// A frame that asks for a transition its execution cannot make (a runtime reporting the
    /// completion of an execution it never reported running) is a bug of the runtime: thrown,
    /// nothing is recorded or acknowledged.
    public static func ingest(
        _ state: SessionState?, instanceId: String, events batch: [ReportedEvent], context: SessionContext
    ) throws(IllegalTransition) -> Decision<Outcome<Ingested>> {
        guard var session = state?.session, session.runtime.instanceId == instanceId else {
            return Decision(output: Outcome(output: Ingested(ack: nil, transitioned: false, ended: nil), notes: []))
        }
        let now = context.now
        let acked = session.runtime.ackedSeq ?? 0
        var last = acked
        var resent = false
        var execution = state?.execution.flatMap { $0.id == session.activeExecutionId && $0.status.isActive ? $0 : nil }
        var touched = false
        var events: [NewEvent] = []
        var notes: [DecisionNote] = []
        var ended: Execution?
        var transitioned = false
        var commands: [OutboxCommand] = []
        var drops: [CommandDrop] = []
        var callbacks: [CallbackDelivery] = []
        var usage: [UsageDay] = []
        /// The session's budget checked for `execution`, its decision added to the batch's change;
        /// whether it decided anything.
        func applyBudget(to execution: ExecutionID) -> Bool {
            guard let step = checkBudget(&session, execution, now: now) else { return false }
            events += step.events
            commands += step.commands
            drops += step.drops
            if let callback = step.callback { callbacks.append(callback) }
            notes += step.notes
            return true
        }
        for event in batch {
            guard event.seq > last else {
                resent = true
                continue
            }
            guard event.seq == last + 1 else {
                notes.append(.eventOutOfOrder(seq: event.seq, acked: last))
                continue
            }
            last = event.seq
            if var current = execution, current.id.rawValue == event.executionId, current.status.isActive {
                switch event.kind {
                case .running:
                    if current.status == .pending {
                        try current.markRunning(at: now)
                        events.append(NewEvent(executionId: current.id, type: EventType.executionRunning, at: now))
                        drops.append(.execution(current.id, kinds: ["execute"]))
                        transitioned = true
                        // A session already past its budget: the new agent asks (or stops) before it spends.
                        _ = applyBudget(to: current.id)
                    }
                case .agent, .output:
                    if current.status == .pending {
                        try current.markRunning(at: now)
                        drops.append(.execution(current.id, kinds: ["execute"]))
                        transitioned = true
                    }
                    // An event arriving now proves the runtime alive now, as a heartbeat would. After a
                    // control-plane restart a runtime whose execution ended meanwhile resends its backlog
                    // and no longer heartbeats; catching up must not count as silence.
                    try current.recordHeartbeat(at: now)
                    // Past the event caps the output is dropped and counted; the agent goes on.
                    let text = JSONText.encode(event.data)
                    let bytes = Int64(text.utf8.count)
                    let caps = context.eventCaps
                    let cap: TruncationReason? =
                        current.progressEvents >= caps.maxEventsPerExecution
                        ? .events : (session.eventBytes ?? 0) + bytes > caps.maxEventBytesPerSession ? .bytes : nil
                    if let cap {
                        current.recordDroppedOutput(at: now)
                        session.recordDropped(current.id, reason: cap)
                    } else {
                        current.recordProgress(at: now)
                        session.eventBytes = (session.eventBytes ?? 0) + bytes
                        events.append(
                            NewEvent(
                                executionId: current.id, type: event.kind == .agent ? EventType.agent : EventType.output, at: event.at, data: event.data,
                                encodedData: text))
                    }
                case .ended:
                    let outcome = RuntimeOutcome(event.data)
                    try current.end(
                        outcome.status, at: now, exitCode: outcome.exitCode, error: outcome.error,
                        interruptReason: outcome.interruptReason, reportedByRuntime: true
                    )
                    if let truncated = session.truncationEvent(of: current.id, at: now) { events.append(truncated) }
                    events.append(outcome.event(current.id, now))
                    session.activeExecutionId = nil
                    session.updatedAt = now
                    if let conversation = event.data[ReportedEvent.conversationIdKey]?.stringValue, !conversation.isEmpty {
                        if ReportedEvent.isSafeConversationId(conversation) {
                            session.agentConversationId = conversation
                        } else {
                            notes.append(.unknownEventKind("execution.ended with a conversation id that could pass for an option: not kept"))
                        }
                    }
                    drops.append(.execution(current.id, kinds: OutboxCommand.holdKinds.union(["execute", "kill"])))
                    ended = current
                    transitioned = true
                    notes.append(.executionEnded(current.id, current.status, detail: current.error ?? current.interruptReason))
                case .inputRequested:
                    if current.status == .pending {
                        try current.markRunning(at: now)
                        drops.append(.execution(current.id, kinds: ["execute"]))
                    }
                    try current.recordHeartbeat(at: now)
                    guard let request = InputRequest(reported: event.data, executionId: current.id, at: now) else {
                        notes.append(.unknownEventKind("input.requested without a valid requestId and kind"))
                        break
                    }
                    let recorded = recordInputRequest(&session, request, now: now)
                    events += recorded.events
                    if let reply = recorded.reply { commands.append(reply) }
                    if let callback = recorded.callback { callbacks.append(callback) }
                    if !recorded.events.isEmpty { notes.append(.inputRequested(request.id, request.kind)) }
                    // Waiting moves the execution's deadlines (and adds the input timeout's).
                    transitioned = true
                case .inputWithdrawn:
                    try current.recordHeartbeat(at: now)
                    guard let requestId = event.data["requestId"]?.stringValue, let request = session.inputs.request(requestId),
                        request.executionId == current.id, request.isPending
                    else { break }
                    let withdrawn = resolveInput(&session, request, InputResolution(decision: .cancelled, by: .agent, at: now), replyToAgent: false)
                    events.append(withdrawn.event)
                    notes.append(.inputResolved(requestId, .cancelled, by: .agent, waitedMs: now.milliseconds(since: request.requestedAt)))
                    // The end of a wait restarts the execution's stale and stuck clocks.
                    transitioned = true
                case .usage:
                    try current.recordHeartbeat(at: now)
                    guard let reported = Usage(reported: event.data) else {
                        notes.append(.unknownEventKind("usage without any count"))
                        break
                    }
                    let added = reported.since(current.usage)
                    let first = current.usage == nil
                    current.usage = reported
                    session.usageTotal = (session.usageTotal ?? Usage()) + added
                    usage.append(UsageDay(owner: session.owner, day: UsageDay.day(of: now), agent: session.spec.agent, usage: added, executions: first ? 1 : 0))
                    notes.append(.usageReported(agent: session.spec.agent, added))
                    // A wait moves the execution's deadlines (and adds the input timeout's).
                    if applyBudget(to: current.id) { transitioned = true }
                case .unknown(let kind):
                    notes.append(.unknownEventKind(kind))
                }
                execution = current
                touched = true
            } else if event.kind == .ended, let pending = state?.execution, pending.id == session.activeExecutionId,
                pending.status == .pending, pending.id.rawValue != event.executionId
            {
                // The runtime ended an execution that had already ended here (failed for lack of
                // heartbeats while it was frozen, say); an execute sent meanwhile was ignored as
                // busy, so the pending execution goes to the runtime again now that it is free.
                drops.append(.execution(pending.id, kinds: ["execute"]))
                commands.append(.execute(pending.id))
            }
        }
        guard last > acked else {
            return Decision(output: Outcome(output: Ingested(ack: resent ? acked : nil, transitioned: false, ended: nil), notes: notes))
        }
        session.runtime.recordAcknowledged(through: last)
        var change = SessionChange(
            sessionId: session.id, session: session, usage: usage, events: events, callbacks: callbacks, commands: commands, dropCommands: drops)
        if touched, let execution { change.executions = [execution] }
        var effects: [SessionEffect] = commands.isEmpty ? [] : [.deliverCommands]
        if !callbacks.isEmpty { effects.append(.deliverCallbacks) }
        if let ended {
            if session.spec.autoCommit {
                session.autoCommitPending = ended.id
                change.session = session
                effects.append(.autoCommit(ended.id))
            } else if let delivery = CallbackDelivery.completion(of: ended, session: session, now: now) {
                change.callbacks.append(delivery)
                if !effects.contains(.deliverCallbacks) { effects.append(.deliverCallbacks) }
            }
        }
        // Progress alone moves no deadline the rules must see now: they read it at the wake-up.
        return Decision(
            change: change, effects: effects, output: Outcome(output: Ingested(ack: last, transitioned: transitioned, ended: ended), notes: notes),
            movesDeadlines: transitioned
        )
    }

    /// How a runtime's `ended` event says an execution ended.
    struct RuntimeOutcome {
        var status: ExecutionStatus
        var exitCode: Int?
        var error: String?
        var interruptReason: String?

        init(_ data: [String: JSONValue]) {
            let exitCode = data["exitCode"]?.intValue.map(Int.init)
            switch data["status"]?.stringValue {
            case "completed":
                self.init(status: .completed, exitCode: exitCode ?? 0)
            case "interrupted":
                self.init(status: .interrupted, exitCode: exitCode, interruptReason: data["interruptReason"]?.stringValue ?? "interrupted")
            default:
                self.init(status: .failed, exitCode: exitCode, error: data["error"]?.stringValue ?? "the agent failed")
            }
        }

        init(status: ExecutionStatus, exitCode: Int? = nil, error: String? = nil, interruptReason: String? = nil) {
            self.status = status
            self.exitCode = exitCode
            self.error = error
            self.interruptReason = interruptReason
        }

        func event(_ id: ExecutionID, _ at: Date) -> NewEvent {
            switch status {
            case .completed:
                NewEvent(executionId: id, type: EventType.executionCompleted, at: at, data: ["exitCode": JSONValue(exitCode.map(Int64.init) ?? 0)])
            case .interrupted:
                NewEvent(executionId: id, type: EventType.executionInterrupted, at: at, data: ["reason": JSONValue(interruptReason)])
            default:
                NewEvent(
                    executionId: id, type: EventType.executionFailed, at: at,
                    data: ["error": JSONValue(error), "exitCode": JSONValue(exitCode.map(Int64.init))])
            }
        }
    }
}
