import Foundation

/// What the rules see of one session when its wake-up fires.
public struct SessionSnapshot: Sendable, Equatable {
    public var session: SessionRecord
    public var latestExecution: Execution?
    public var oldestEventAt: Date?

    public init(session: SessionRecord, latestExecution: Execution?, oldestEventAt: Date?) {
        self.session = session
        self.latestExecution = latestExecution
        self.oldestEventAt = oldestEventAt
    }
}

/// Something the shell must do for a session. Each is a state transition done once; after
/// carrying them out the shell evaluates again (evaluation is idempotent) to find the next wake-up.
public enum SessionAction: Sendable, Equatable {
    case failExecution(ExecutionID, error: String)
    case reportStuck(ExecutionID, sinceLastProgressMs: Int64)
    case stopRuntime(StopReason)
    /// Delete the session: untouched for the TTL.
    case expire(untouchedMs: Int64)
    /// Delete the session's events older than this.
    case sweepEvents(olderThan: Date)
    /// Cancel pending input requests whose execution is no longer active (it ended, or its
    /// runtime stopped): their agent is gone or went on.
    case cancelInputs([String])
    /// Deny a pending input request nobody answered within the input timeout.
    case timeOutInput(String)
}

/// The result of evaluating a session's rules at `now`.
public struct SessionEvaluation: Sendable, Equatable {
    public var actions: [SessionAction]
    /// The session's next durable wake-up: the earliest deadline still ahead, or nil for none.
    public var nextWakeUp: Date?
    /// The idle rule's view, for the session's `activity` field.
    public var idle: IdlePolicy.Decision
}

/// All of a session's timing rules in one pure function: execution liveness, the starting
/// runtime's connect deadline, runtime idleness, the input timeout, the session TTL and event
/// retention.
public enum SessionRules {
    public static func evaluate(_ snapshot: SessionSnapshot, timing: Timing, controlPlaneStartedAt: Date, now: Date) -> SessionEvaluation {
        let session = snapshot.session
        var actions: [SessionAction] = []
        var deadlines: [Date] = []

        // A starting runtime not launched yet is being prepared (a cold start restoring its
        // workspace and running its setup commands): no pending deadline runs until its launch.
        // Nor while the runtime is stopping (an execution accepted then starts it again once the
        // stop is recorded), or while the last execution's auto-commit has not been recorded (the
        // next one goes to the runtime after it).
        let preparing = session.runtime.state == .starting && session.runtime.process == nil
        let held = preparing || session.runtime.state == .stopping || session.autoCommitPending != nil
        // Input requests: only the active execution's may wait; each waits up to the input timeout.
        let inputs = session.inputs
        let activeId = snapshot.latestExecution.flatMap { $0.status.isActive && $0.id == session.activeExecutionId ? $0.id : nil }
        let orphaned = inputs.pending.filter { $0.executionId != activeId }.map(\.id)
        if !orphaned.isEmpty { actions.append(.cancelInputs(orphaned)) }
        for request in inputs.pending where request.executionId == activeId {
            let deadline = SessionInputs.deadline(of: request, timeoutMs: timing.inputTimeoutMs, heardSince: controlPlaneStartedAt)
            if now >= deadline { actions.append(.timeOutInput(request.id)) } else { deadlines.append(deadline) }
        }

        if let execution = snapshot.latestExecution, execution.status.isActive, !(held && execution.status == .pending) {
            let liveness = ExecutionLiveness.evaluate(
                execution, timing: timing, controlPlaneStartedAt: controlPlaneStartedAt, runtimeLaunchedAt: session.runtime.launchedAt, now: now,
                waitingForInput: inputs.waiting(execution.id) != nil,
                lastInputAt: inputs.requests.filter { $0.executionId == execution.id }.map { $0.resolution?.at ?? $0.requestedAt }.max()
            )
            if let failure = liveness.failure { actions.append(.failExecution(execution.id, error: failure)) }
            if let stuckFor = liveness.stuckForMs { actions.append(.reportStuck(execution.id, sinceLastProgressMs: stuckFor)) }
            deadlines.append(contentsOf: liveness.nextDeadline.map { [$0] } ?? [])
        }

        // A runtime that never connects within the pending timeout of its launch is declared crashed.
        if session.runtime.state == .starting, !preparing, let launched = session.runtime.launchedAt ?? session.runtime.requestedAt {
            let deadline = max(launched, controlPlaneStartedAt).adding(milliseconds: timing.pendingTimeoutMs)
            if now >= deadline {
                actions.append(
                    .stopRuntime(
                        StopReason(
                            rule: .crashed, at: now, detail: "runtime did not connect within \(timing.pendingTimeoutMs) ms of its start"
                        )))
            } else {
                deadlines.append(deadline)
            }
        }

        let idleTimeout = session.idleTimeoutMs(default: timing.idleTimeoutMs)
        // An auto-commit in progress is work in the workspace: the runtime is not idle meanwhile
        // (its end is the last activity's successor; the recording wakes the rules again).
        let idle =
            session.autoCommitPending.map { IdlePolicy.Decision.busy($0) }
            ?? IdlePolicy.evaluate(runtime: session.runtime, latest: snapshot.latestExecution, idleTimeoutMs: idleTimeout, now: now)
        switch idle {
        case .stop(let reason): actions.append(.stopRuntime(reason))
        case .idleAt(let deadline, _): deadlines.append(deadline)
        case .busy, .notRunning: break
        }

        // The TTL never deletes a session whose agent is working or whose runtime is up.
        let working = session.activeExecutionId != nil || session.runtime.state != .stopped
        if !working {
            let expiry = session.updatedAt.adding(milliseconds: timing.sessionTTLMs)
            if now >= expiry { actions.append(.expire(untouchedMs: now.milliseconds(since: session.updatedAt))) } else { deadlines.append(expiry) }
        }

        if let oldest = snapshot.oldestEventAt {
            let sweepAt = oldest.adding(milliseconds: timing.eventRetentionMs)
            if now >= sweepAt { actions.append(.sweepEvents(olderThan: now.adding(milliseconds: -timing.eventRetentionMs))) } else { deadlines.append(sweepAt) }
        }

        return SessionEvaluation(actions: actions, nextWakeUp: deadlines.min(), idle: idle)
    }
}
