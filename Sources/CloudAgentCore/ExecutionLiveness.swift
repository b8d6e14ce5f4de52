import Foundation

/// The liveness of an active execution (the design's "Liveness of an execution" (docs/architecture.md)), as a pure
/// function of the execution, the durations, the control plane's start and `now`.
///
/// - pending: failed when the runtime has not started it by
///   max(startedAt, controlPlaneStartedAt, runtimeLaunchedAt) + pendingTimeout (a cold start's
///   restore and setup commands, before the launch, never count);
/// - running: failed when max(lastHeartbeat ?? runningAt, controlPlaneStartedAt) + staleThreshold
///   has passed, so control-plane downtime never counts against a runtime;
/// - running without progress (agent events) for stuckAfter: one `execution.stuck` warning per
///   stall, never a kill;
/// - running and waiting for input (a permission or an answer): active, never stale, never stuck
///   (the input timeout is the request's own deadline); an answer counts as progress.
public enum ExecutionLiveness {
    public struct Decision: Sendable, Equatable {
        /// Fail the execution with this error, or nil.
        public var failure: String?
        /// Emit `execution.stuck` with the silence so far, or nil.
        public var stuckForMs: Int64?
        /// The earliest time this decision can change.
        public var nextDeadline: Date?
    }

    public static func evaluate(
        _ execution: Execution, timing: Timing, controlPlaneStartedAt: Date, runtimeLaunchedAt: Date? = nil, now: Date,
        waitingForInput: Bool = false, lastInputAt: Date? = nil
    ) -> Decision {
        switch execution.status {
        case .pending:
            let since = max(execution.startedAt, controlPlaneStartedAt, runtimeLaunchedAt ?? execution.startedAt)
            let deadline = since.adding(milliseconds: timing.pendingTimeoutMs)
            guard now >= deadline else { return Decision(nextDeadline: deadline) }
            return Decision(failure: "runtime never started the execution (pending for \(now.milliseconds(since: execution.startedAt)) ms)")
        case .running:
            // Waiting for a user is not silence: the runtime keeps heartbeating, and nothing here
            // may fail or warn about an agent that is waiting for an answer.
            if waitingForInput { return Decision() }
            // The end of a wait (an answer, a timeout) starts the stale clock afresh: the wait is
            // never counted as the runtime's silence.
            let lastSign = max(execution.lastHeartbeat ?? execution.runningAt ?? execution.startedAt, lastInputAt ?? .distantPast)
            let staleAt = max(lastSign, controlPlaneStartedAt).adding(milliseconds: timing.staleThresholdMs)
            if now >= staleAt {
                let silence = now.milliseconds(since: lastSign)
                let what = execution.lastHeartbeat == nil ? "no heartbeat since it started running" : "no heartbeat"
                return Decision(failure: "\(what) for \(silence / 1000) s (stale threshold \(timing.staleThresholdMs) ms)")
            }
            let runningSince = execution.runningAt ?? execution.startedAt
            let lastProgress = max(execution.lastEventAt ?? runningSince, runningSince, lastInputAt ?? runningSince)
            let alreadyWarned = execution.stuckReportedAt.map { $0 >= lastProgress } ?? false
            if alreadyWarned { return Decision(nextDeadline: staleAt) }
            let stuckAt = lastProgress.adding(milliseconds: timing.stuckAfterMs)
            if now >= stuckAt {
                return Decision(stuckForMs: now.milliseconds(since: lastProgress), nextDeadline: staleAt)
            }
            return Decision(nextDeadline: min(staleAt, stuckAt))
        // A queued execution waits for its turn: no liveness rule applies to it.
        case .queued, .completed, .failed, .interrupted:
            return Decision()
        }
    }
}
