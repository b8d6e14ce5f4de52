import Foundation

/// When a decision's transaction also evaluates the session's rules (`SessionReducer.evaluate`)
/// on the state the decision leaves, so that the change, the actions the rules take after it
/// and the session's next wake-up are written together.
public enum RulePass: Sendable, Equatable {
    /// After a change that may move the session's deadlines (`Decision.movesDeadlines`); a
    /// decision that changes nothing leaves the rules as they were.
    case afterChange
    /// Whatever the decision: a wake-up firing. With `timer`, a stored wake-up firing, which
    /// goes ahead only while the stored wake-up is due (see `SessionReducer.evaluate`).
    case always(timer: Bool)
}

extension SessionState {
    /// The state a transaction reads after `change` (nil when it deletes the session): the
    /// record, the active execution (else the latest of those known here), the oldest event and
    /// the stored wake-up as the store would read them (after a sweep the oldest event is not
    /// known here: nil, as `SessionReducer.evaluate` leaves it after its own sweep).
    public func applying(_ change: SessionChange) -> SessionState? {
        if change.deletesSession { return nil }
        var next = self
        if let session = change.session { next.session = session }
        var known: [ExecutionID: Execution] = [:]
        if let nextQueued { known[nextQueued.id] = nextQueued }
        if let execution { known[execution.id] = execution }
        for var written in change.executions + (change.newExecution.map { [$0] } ?? []) {
            // As the stores save it: a saved copy never moves a recorded heartbeat back.
            if let recorded = known[written.id]?.lastHeartbeat { written.lastHeartbeat = max(recorded, written.lastHeartbeat ?? recorded) }
            known[written.id] = written
        }
        for cancelled in change.cancelledQueued { known[cancelled] = nil }
        if let active = next.session.activeExecutionId, let execution = known[active] {
            next.execution = execution
        } else {
            // The latest is the latest that is not queued, as the stores read it.
            next.execution = known.values.filter { $0.status != .queued }.max { $0.id < $1.id }
        }
        next.nextQueued = next.session.queue.first.flatMap { known[$0] }
        if change.deleteEventsBefore != nil {
            next.oldestEventAt = nil
        } else if next.oldestEventAt == nil {
            next.oldestEventAt = change.events.first?.at
        }
        if let wakeUp = change.wakeUp { next.wakeUp = wakeUp }
        return next
    }
}

extension CommandDrop {
    /// Whether this drop removes an outbox row holding `command`.
    public func drops(_ command: OutboxCommand) -> Bool {
        switch self {
        case .all: true
        case .settings: command.kind == "settings"
        case .execution(let id, let kinds): command.executionId == id && kinds.contains(command.kind)
        }
    }
}

extension SessionChange {
    /// This change followed by `next` (decided on the state this one leaves), as one change
    /// that writes what the two would write one after the other.
    public func followed(by next: SessionChange) -> SessionChange {
        if deletesSession { return self }
        if next.deletesSession {
            // The session goes: this change's events are its last, sent though not kept.
            var deletion = next
            deletion.events = events + next.events
            return deletion
        }
        var merged = self
        if let session = next.session { merged.session = session }
        for execution in next.executions {
            if merged.newExecution?.id == execution.id {
                merged.newExecution = execution
            } else {
                merged.executions.removeAll { $0.id == execution.id }
                merged.executions.append(execution)
            }
        }
        merged.cancelledQueued += next.cancelledQueued
        merged.usage += next.usage
        merged.events += next.events
        if let wakeUp = next.wakeUp { merged.wakeUp = wakeUp }
        merged.callbacks += next.callbacks
        // The second change's drops come after the first one's rows were added.
        merged.commands = commands.filter { command in !next.dropCommands.contains { $0.drops(command) } } + next.commands
        merged.dropCommands += next.dropCommands
        if let cutoff = next.deleteEventsBefore { merged.deleteEventsBefore = max(cutoff, deleteEventsBefore ?? cutoff) }
        return merged
    }
}

extension Decision {
    /// This decision with no notes for the log (the form `SessionReducer.ruled` takes).
    public var withoutNotes: Decision<SessionReducer.Outcome<Output>> {
        Decision<SessionReducer.Outcome<Output>>(
            change: change, effects: effects, output: SessionReducer.Outcome(output: output, notes: []), movesDeadlines: movesDeadlines
        )
    }
}

extension SessionReducer {
    /// A decision's output with the session's next wake-up as its transaction left it.
    public struct Ruled<Output: Sendable>: Sendable {
        public var output: Output
        /// Nil when the decision changed nothing; `.some(nil)` when the session has no wake-up
        /// (or is gone).
        public var nextWakeUp: Date??

        public init(output: Output, nextWakeUp: Date??) {
            self.output = output
            self.nextWakeUp = nextWakeUp
        }
    }

    /// `decision` (made on `state`) followed by the session's rules evaluated on the state it
    /// leaves (per `rules`): one change, the decision's effects then the rules', the notes of
    /// both. What a transaction of `SessionStore.update` decides, so that a change and the
    /// session's next wake-up are one write. Throws what the rules' evaluation throws.
    public static func ruled<Output: Sendable>(
        _ state: SessionState?, _ decision: Decision<Outcome<Output>>, rules: RulePass, context: SessionContext
    ) throws(IllegalTransition) -> Decision<Outcome<Ruled<Output>>> {
        let timer: Bool
        switch rules {
        case .afterChange:
            guard decision.movesDeadlines, let change = decision.change, !change.deletesSession else {
                // A change that moves no deadline leaves the stored wake-up as it is: it is armed
                // where the change was made (the node a runtime reconnected to, say).
                let next: Date??
                if decision.change?.deletesSession == true {
                    next = .some(nil)
                } else if decision.change != nil, let stored = state?.wakeUp {
                    next = .some(stored)
                } else {
                    next = nil
                }
                return Decision(
                    change: decision.change, effects: decision.effects,
                    output: Outcome(output: Ruled(output: decision.output.output, nextWakeUp: next), notes: decision.output.notes)
                )
            }
            timer = false
        case .always(let isTimer):
            timer = isTimer
        }
        let after: SessionState?
        if let change = decision.change {
            after = state.flatMap { $0.applying(change) }
        } else {
            after = state
        }
        let evaluation = try evaluate(after, context: context, timer: timer)
        let change: SessionChange? =
            switch (decision.change, evaluation.change) {
            case (let first?, let next?): first.followed(by: next)
            case (let first?, nil): first
            case (nil, let next): next
            }
        var effects = decision.effects
        for effect in evaluation.effects where !effects.contains(effect) { effects.append(effect) }
        let next: Date?? = decision.change?.deletesSession == true ? .some(nil) : .some(evaluation.output.output)
        return Decision(
            change: change, effects: effects,
            output: Outcome(output: Ruled(output: decision.output.output, nextWakeUp: next), notes: decision.output.notes + evaluation.output.notes)
        )
    }
}
