import Foundation

/// The message queue: follow-ups sent with `queue` while an execution is active wait, stored
/// `queued`, and start one after another in order as soon as no execution is active, whatever
/// the last one's outcome. A queued execution is not activity: it never keeps a runtime up,
/// and a stopped runtime is started (cold) for it when its turn comes.
extension SessionReducer {
    /// Queues a follow-up behind the active execution (and those already queued): at most
    /// `SessionRecord.maxQueued` wait, beyond that the answer is 429 `QUEUE_FULL`.
    static func queueMessage(_ session: SessionRecord, _ request: NewExecution, context: SessionContext) throws(SessionError) -> Decision<Outcome<Execution>> {
        var session = session
        guard session.queue.count < SessionRecord.maxQueued else {
            throw .limitReached(
                .queue, limit: Double(SessionRecord.maxQueued),
                "session \(session.id) already has \(SessionRecord.maxQueued) queued messages; retry once one has started")
        }
        let now = context.now
        let prompt = request.prompt ?? session.spec.prompt
        let execution = Execution.queued(
            id: request.id, sessionId: session.id, prompt: prompt, mode: request.mode ?? session.spec.mode,
            model: request.model ?? session.spec.model, at: now
        )
        session.queue.append(execution.id)
        session.executionCount += 1
        session.updatedAt = now
        let change = SessionChange(
            sessionId: session.id, session: session, newExecution: execution,
            events: [
                NewEvent(
                    executionId: execution.id, type: EventType.executionQueued, at: now,
                    data: ["prompt": .string(String(prompt.prefix(2000))), "position": JSONValue(Int64(session.queue.count))])
            ]
        )
        // A queued follow-up moves no deadline while an execution is active; with none active
        // (its end just recorded), the rules start the queue's head in this transaction.
        return Decision(
            change: change, output: Outcome(output: execution, notes: [.executionQueued(execution.id, position: session.queue.count)]),
            movesDeadlines: session.activeExecutionId == nil
        )
    }

    /// Cancels a queued execution before its turn: its row goes, and `execution.cancelled` says
    /// so. One that has started (or ended, or never existed in this session) is refused: 409
    /// `INVALID_STATE` for an execution of the session that is not queued, else 404.
    public static func cancelQueued(
        _ state: SessionState?, id: SessionID, owner: Owner, executionId: ExecutionID, known: Bool, context: SessionContext
    ) throws(SessionError) -> Decision<Outcome<Void>> {
        var session = try owned(state, id: id, by: owner)
        guard let index = session.queue.firstIndex(of: executionId) else {
            if known { throw .invalidState("execution \(executionId) is not queued: only a queued execution can be cancelled") }
            throw .executionNotFound(executionId)
        }
        let now = context.now
        session.queue.remove(at: index)
        session.executionCount = max(0, session.executionCount - 1)
        session.updatedAt = now
        let change = SessionChange(
            sessionId: session.id, session: session, cancelledQueued: [executionId],
            events: [NewEvent(executionId: executionId, type: EventType.executionCancelled, at: now, data: ["reason": "user"])]
        )
        return Decision(change: change, output: Outcome(output: (), notes: [.queuedCancelled(executionId)]), movesDeadlines: false)
    }

    /// The first queued execution starts when no execution is active (the rules' first step,
    /// so it follows any end in the same transaction): it becomes pending as a follow-up sent
    /// now would, a stopped runtime is started (cold) for it, and it goes to the runtime after
    /// the last execution's auto-commit. False when nothing started (no queue, an execution
    /// active, or the queue's head not read).
    static func startNextQueued(
        _ state: inout SessionState, change: inout SessionChange, effects: inout [SessionEffect], notes: inout [DecisionNote], now: Date
    ) throws(IllegalTransition) -> Bool {
        guard state.session.activeExecutionId == nil, let head = state.session.queue.first, var next = state.nextQueued, next.id == head,
            next.status == .queued
        else { return false }
        // The execution this one follows, if this transaction changed it, is saved too.
        if let previous = state.execution { change.save(previous) }
        try next.promote(at: now)
        let runtimeBefore = state.session.runtime.state
        state.session.queue.removeFirst()
        state.session.activeExecutionId = next.id
        state.session.updatedAt = now
        if let pending = state.session.autoCommitPending, !effects.contains(.autoCommit(pending)) { effects.append(.autoCommit(pending)) }
        if case .stopped(let stopped) = state.session.runtime {
            state.session.runtime = .starting(stopped.starting(at: now))
            effects.append(.launch(requestedAt: now, restore: true))
        }
        if !effects.contains(.deliverCommands) { effects.append(.deliverCommands) }
        state.execution = next
        state.nextQueued = nil
        change.session = state.session
        change.save(next)
        change.events.append(
            NewEvent(
                executionId: next.id, type: EventType.executionStarted, at: now,
                data: ["prompt": .string(String(next.prompt.prefix(2000))), "followUp": .bool(true), "queued": .bool(true)]))
        change.commands.append(.execute(next.id))
        notes.append(.executionAccepted(next.id, runtime: runtimeBefore))
        return true
    }
}

extension SessionChange {
    /// Saves `execution` with this change (replacing an earlier copy of it in the change).
    mutating func save(_ execution: Execution) {
        if newExecution?.id == execution.id {
            newExecution = execution
            return
        }
        executions.removeAll { $0.id == execution.id }
        executions.append(execution)
    }
}
