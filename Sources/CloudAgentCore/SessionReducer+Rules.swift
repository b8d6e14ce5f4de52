import Foundation

extension SessionReducer {
    /// A wake-up: the session's rules (`SessionRules`) evaluated at now, and everything they
    /// decide applied in one change, with the session's next wake-up. Idempotent: evaluating
    /// the result again decides nothing. Output: the next wake-up (nil for none, or when the
    /// session is gone).
    ///
    /// `timer` is a stored wake-up firing (not a re-evaluation after a change): it goes ahead
    /// only while the stored wake-up is due. Several nodes may arm the same wake-up; the first
    /// to evaluate moves it, and the others find it not due here, in the session's transaction,
    /// and decide nothing, so every timer fires once.
    ///
    /// The rules act only on an active execution and on a runtime that is up: a transition they
    /// ask for that is not valid is a bug, thrown (nothing is written).
    public static func evaluate(
        _ state: SessionState?, context: SessionContext, timer: Bool = false
    ) throws(IllegalTransition) -> Decision<Outcome<Date?>> {
        guard var state else { return Decision(output: Outcome(output: nil, notes: [])) }
        if timer, (state.wakeUp.map { $0 > context.now } ?? true) {
            return Decision(output: Outcome(output: state.wakeUp, notes: []))
        }
        let id = state.session.id
        let now = context.now
        var change = SessionChange(sessionId: id)
        var effects: [SessionEffect] = []
        var notes: [DecisionNote] = []
        var changed = false
        let before = state.execution
        // Each action is a transition done once; a few rounds settle any chain of them.
        for _ in 0..<4 {
            // A session with no active execution starts its next queued one first.
            if try startNextQueued(&state, change: &change, effects: &effects, notes: &notes, now: now) { changed = true }
            let evaluation = SessionRules.evaluate(
                SessionSnapshot(session: state.session, latestExecution: state.execution, oldestEventAt: state.oldestEventAt),
                timing: context.timing, controlPlaneStartedAt: context.heardSince(state.session), now: now
            )
            if evaluation.actions.isEmpty {
                if changed || state.wakeUp != evaluation.nextWakeUp { change.wakeUp = .some(evaluation.nextWakeUp) }
                let committed = changed || change.wakeUp != nil
                return Decision(change: committed ? change : nil, effects: effects, output: Outcome(output: evaluation.nextWakeUp, notes: notes))
            }
            for action in evaluation.actions {
                switch action {
                case .failExecution(let executionId, let error):
                    guard var execution = state.execution, execution.id == executionId else { continue }
                    try execution.end(.failed, at: now, error: error, reportedByRuntime: false)
                    state.execution = execution
                    state.session.activeExecutionId = nil
                    state.session.updatedAt = now
                    if let truncated = state.session.truncationEvent(of: executionId, at: now) { change.events.append(truncated) }
                    change.events.append(NewEvent(executionId: executionId, type: EventType.executionFailed, at: now, data: ["error": .string(error)]))
                    change.commands.append(.kill(executionId, reason: error))
                    change.dropCommands.append(.execution(executionId, kinds: ["execute"]))
                    if let delivery = CallbackDelivery.completion(of: execution, session: state.session, now: now) {
                        change.callbacks.append(delivery)
                        effects.append(.deliverCallbacks)
                    }
                    effects.append(.deliverCommands)
                    notes.append(.executionEnded(executionId, .failed, detail: error))
                case .reportStuck(let executionId, let silenceMs):
                    guard var execution = state.execution, execution.id == executionId else { continue }
                    execution.stuckReportedAt = now
                    state.execution = execution
                    change.events.append(
                        NewEvent(
                            executionId: executionId, type: EventType.executionStuck, at: now, data: ["sinceLastProgressMs": JSONValue(silenceMs)]
                        ))
                    notes.append(.executionStuck(executionId, sinceLastProgressMs: silenceMs))
                case .stopRuntime(let reason):
                    let stopping: RuntimeStatus.Stopping
                    switch state.session.runtime {
                    case .starting(let starting): stopping = starting.stopping(reason)
                    case .running(let running): stopping = running.stopping(reason)
                    // Stopping already (a stop is decided once), or stopped: nothing to stop.
                    case .stopping, .stopped: continue
                    }
                    state.session.runtime = .stopping(stopping)
                    state.session.updatedAt = now
                    effects.append(.terminate(stopping.process, sandbox: stopping.sandbox, rule: reason.rule, host: stopping.hostNode))
                    notes.append(.stopDecided(reason))
                case .expire(let untouchedMs):
                    return Decision(
                        change: .delete(id), effects: [.removed(.ttl)],
                        output: Outcome(output: nil, notes: [.sessionExpired(untouchedMs: untouchedMs)])
                    )
                case .cancelInputs(let requestIds):
                    for requestId in requestIds {
                        guard let request = state.session.inputs.request(requestId), request.isPending else { continue }
                        let resolution = InputResolution(decision: .cancelled, by: .interrupt, at: now)
                        change.events.append(resolveInput(&state.session, request, resolution, replyToAgent: false).event)
                        notes.append(.inputResolved(requestId, .cancelled, by: .interrupt, waitedMs: now.milliseconds(since: request.requestedAt)))
                    }
                case .timeOutInput(let requestId):
                    guard let request = state.session.inputs.request(requestId), request.isPending else { continue }
                    let resolution = InputResolution(decision: .timeout, by: .timeout, optionId: request.option(allow: false, always: false)?.id, at: now)
                    let resolved = resolveInput(&state.session, request, resolution, replyToAgent: request.kind != .budget)
                    change.events.append(resolved.event)
                    if let reply = resolved.reply {
                        change.commands.append(reply)
                        effects.append(.deliverCommands)
                    }
                    if request.kind == .budget {
                        // Nobody said go on: the execution stops at its budget.
                        let step = answerBudget(&state.session, request, allowed: false)
                        change.commands += step.commands
                        change.dropCommands += step.drops
                        if !step.commands.isEmpty { effects.append(.deliverCommands) }
                    }
                    notes.append(.inputResolved(requestId, .timeout, by: .timeout, waitedMs: now.milliseconds(since: request.requestedAt)))
                case .sweepEvents(let cutoff):
                    change.deleteEventsBefore = cutoff
                    // The oldest event left is not known here: the next evaluation reads it.
                    state.oldestEventAt = nil
                    notes.append(.eventsSwept(before: cutoff))
                }
            }
            change.session = state.session
            if state.execution != before, let execution = state.execution { change.save(execution) }
            changed = true
        }
        change.wakeUp = .some(now.adding(milliseconds: 1000))
        return Decision(change: change, effects: effects, output: Outcome(output: now.adding(milliseconds: 1000), notes: notes))
    }
}
